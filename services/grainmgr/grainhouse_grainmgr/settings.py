"""Settings of the grainmgr service (`GRAINHOUSE_GRAINMGR_*`).

Owns: the names, defaults and validation of grainmgr's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings

MiB = 1024 * 1024


class GrainmgrSettings(ServiceSettings):
    service = "grainmgr"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of grainmgr's own login role (a secret)."
    )
    relay_listen: str = Field(
        "127.0.0.1:0",
        description="host:port of the byte-stream relay the frontend sends grain traffic to.",
    )
    max_package_bytes: int = Field(
        1024 * MiB, gt=0, description="Largest package file InstallPackage accepts."
    )
    idle_stop_seconds: float = Field(
        90.0, gt=0, description="A running grain without traffic for this long is stopped."
    )
    trash_retention_seconds: float = Field(
        30 * 86400.0, gt=0, description="How long a trashed grain stays restorable."
    )
    start_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a start may take until the app listens."
    )
    stop_grace_seconds: int = Field(
        10, ge=1, le=300, description="SIGTERM-to-SIGKILL grace when a grain is stopped."
    )
    housekeeping_interval_seconds: float = Field(
        5.0, gt=0, description="How often idle grains and expired trash are looked for."
    )
    ping_interval_seconds: float = Field(
        10.0, gt=0, description="How often a running grain's bridge is pinged."
    )
    grain_memory_bytes: int = Field(512 * MiB, gt=0, description="Memory limit of one grain.")
    grain_var_quota_bytes: int = Field(
        1024 * MiB, gt=0, description="Disk quota of one grain's /var."
    )
    max_running_grains: int = Field(
        200, gt=0, description="Grains that may run at once on this node."
    )
    bridge_python: str = Field(
        "/usr/bin/python3",
        description="Interpreter inside the sandbox that runs the bridge (stdlib + pycapnp).",
    )
    register_with_auth: bool = Field(
        True,
        description="Call auth.RegisterGrain/ForgetGrain (an auth without them is tolerated).",
    )
