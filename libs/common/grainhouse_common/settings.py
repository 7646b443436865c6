"""Typed settings from `GRAINHOUSE_*` environment variables, validated at start.

Owns: the rules for reading settings: names, `_FILE` indirection for secrets, the strict
check that refuses unknown names, and the one-line error + exit code 2 on bad input.
Trusts: the process environment and files named by `*_FILE` variables.
Never: prints or logs a secret value (fields typed `SecretStr` are masked everywhere).

Naming: settings every service shares are `GRAINHOUSE_<NAME>` (`CommonSettings`); a
service's own settings are `GRAINHOUSE_<SVC>_<NAME>` (a subclass of `ServiceSettings`
with `service = "auth"` etc.). A service rejects an unknown name in the common space or
in its own namespace, and leaves other services' namespaces alone (one environment can
feed every service). Any setting may instead be given as `GRAINHOUSE_<...>_FILE=<path>`:
the file's content (one trailing newline removed) is the value - the way compose secrets
arrive.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "GRAINHOUSE_"
# Namespaces of the services and of the command-line client. A variable under one of
# these belongs to that program; the others ignore it.
NAMESPACES = ("AUTH", "GRAINMGR", "BACKUP", "FRONTEND", "CLI")


class SettingsError(Exception):
    """A setting is unknown or invalid; the message is one readable line."""


class CommonSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(Path("var"), description="Directory that holds all state.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log line written."
    )
    dev_mode: bool = Field(False, description="Enables dev accounts and logs email links.")
    nats_url: str = Field(
        "nats://127.0.0.1:6085", description="NATS server URL(s), comma separated."
    )
    public_url: str = Field(
        "http://localhost:6080", description="Where people reach the web UI and REST API."
    )
    wildcard_host: str = Field(
        "*.localhost:6080", description="Host pattern of per-session grain origins."
    )
    auth_addr: str = Field("127.0.0.1:6081", description="gRPC address of the auth service.")
    grainmgr_addr: str = Field("127.0.0.1:6082", description="gRPC address of grainmgr.")
    backup_addr: str = Field("127.0.0.1:6083", description="gRPC address of the backup service.")
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, le=300, description="How long SIGTERM waits for in-flight work."
    )
    supervisor_pid: int = Field(
        0, ge=0, description="Set by `grainhouse up`: the service exits when this process dies."
    )


class ServiceSettings(BaseSettings):
    """Base of a service's own settings (`GRAINHOUSE_<SVC>_*`)."""

    service: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    listen: str = Field("127.0.0.1:0", description="Address the service listens on.")
    metrics_listen: str = Field(
        "127.0.0.1:0", description="Address of the Prometheus /metrics listener."
    )


S = TypeVar("S", bound=BaseSettings)


def _env_prefix(cls: type[BaseSettings]) -> str:
    if issubclass(cls, ServiceSettings):
        return f"{PREFIX}{cls.service.upper()}_"
    return PREFIX


def env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name -> field name, for one settings class."""
    prefix = _env_prefix(cls)
    return {f"{prefix}{name.upper()}": name for name in cls.model_fields}


def _read_file_setting(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"setting {var}: cannot read {path}: {exc.strerror}") from exc
    return text[:-1] if text.endswith("\n") else text


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment, refusing unknown names in our namespaces."""
    env = dict(os.environ if environ is None else environ)
    own = env_names(cls)
    common = env_names(CommonSettings)
    own_ns = _env_prefix(cls) if issubclass(cls, ServiceSettings) else None
    others = tuple(f"{PREFIX}{ns}_" for ns in NAMESPACES if f"{PREFIX}{ns}_" != own_ns)

    values: dict[str, Any] = {}
    for var, raw in sorted(env.items()):
        if not var.startswith(PREFIX):
            continue
        name, value = var, raw
        if var.endswith("_FILE") and (var[:-5] in own or var[:-5] in common):
            name, value = var[:-5], _read_file_setting(var, raw)
        if name in own:
            values[own[name]] = value
            continue
        if name in common:
            continue  # read by CommonSettings
        if own_ns is not None and name.startswith(own_ns):
            raise SettingsError(f"unknown setting {var}")
        if name.startswith(others):
            continue  # another program's setting
        raise SettingsError(f"unknown setting {var}")
    try:
        # Values go in by field name; nothing else is read from the environment, so
        # what was validated above is exactly what is used.
        return cls.model_validate(values) if values else cls.model_validate({})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        var = f"{_env_prefix(cls)}{field.upper()}"
        if err["type"] == "missing":
            raise SettingsError(f"setting {var} is required") from exc
        shown = "***" if "secret" in field or "password" in field or "key" in field else None
        got = shown or repr(err.get("input"))
        raise SettingsError(f"invalid setting {var}={got}: {err['msg']}") from exc


def load_or_exit(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """`load`, or one line on stderr and exit code 2 (as the issue asks)."""
    try:
        return load(cls, environ)
    except SettingsError as exc:
        print(f"grainhouse: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
