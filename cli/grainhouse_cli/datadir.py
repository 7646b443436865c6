"""The data directory of one running platform: its lock, its state file, its secrets.

Owns: `<data>/run/` (lock and state), `<data>/secrets/` (generated passwords and keys,
mode 0600, directory 0700), `<data>/logs/` (service logs).
Trusts: nothing in the directory it did not write; a missing or corrupt state file means
"not running".
Never: prints a secret; writes outside the data directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


class DataDirError(Exception):
    """One readable line about why the data directory cannot be used."""


@dataclass
class DataDir:
    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.run / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run / "grainhouse.lock"

    def prepare(self) -> None:
        """Create the layout, or say in one line why it cannot be created."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in (self.run, self.logs):
                sub.mkdir(exist_ok=True)
            self.secrets.mkdir(mode=0o700, exist_ok=True)
            probe = self.run / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise DataDirError(
                f"data directory {self.root} is not writable: {exc.strerror or exc}"
            ) from None

    def secret(self, name: str, nbytes: int = 24) -> str:
        """A generated secret, created once (0600) and reused on every start."""
        path = self.secrets / name
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = secrets.token_urlsafe(nbytes)
            self.write_secret(name, value)
            return value

    def write_secret(self, name: str, value: str) -> Path:
        path = self.secrets / name
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        tmp.replace(path)
        return path

    # -- lock ---------------------------------------------------------------------------

    def lock(self) -> TextIO:
        """Hold the data directory for this process; refuse a second `up` with its pid."""
        fh = open(self.lock_file, "a+", encoding="utf-8")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise DataDirError(
                f"Grainhouse is already running on {self.root} (pid {pid}); "
                "stop it first or use another --data-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    def is_locked(self) -> bool:
        """True while some process holds the lock (a platform runs on this directory)."""
        try:
            fh = open(self.lock_file, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    # -- state --------------------------------------------------------------------------

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(self.state_file)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
