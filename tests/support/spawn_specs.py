"""A valid SpawnSpec to start from in tests, on directories made under a temporary path.

Owns: nothing but the example's field values. Trusts: grainmgr's spec.py for what is valid.
Never: starts a sandbox.
"""

from __future__ import annotations

from pathlib import Path

from grainhouse_grainmgr.spec import SpawnSpec


def spawn_spec(tmp_path: Path, **changes: object) -> SpawnSpec:
    """A spec that passes check(), with `changes` applied (the dirs pkg/ and var/ made)."""
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "var").mkdir(exist_ok=True)
    fields: dict[str, object] = {
        "grain_id": "g-1",
        "argv": ["/opt/app/run"],
        "env": {"A": "1"},
        "package_dir": str(tmp_path / "pkg"),
        "var_dir": str(tmp_path / "var"),
        "log_path": str(tmp_path / "log"),
    }
    fields.update(changes)
    return SpawnSpec(**fields)  # type: ignore[arg-type]
