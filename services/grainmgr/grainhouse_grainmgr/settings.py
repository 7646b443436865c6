"""Settings of the grainmgr service (`GRAINHOUSE_GRAINMGR_*`).

Owns: the names, defaults and validation of grainmgr's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

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
    relay_socket: str = Field(
        "",
        description=(
            "Absolute path of a Unix socket on which the relay also listens (same handshake; "
            "cheaper than loopback TCP for a frontend on the same host). Empty: off. When set, "
            "OpenSession hands out `unix:<path>` unless relay_advertise says otherwise. The "
            "socket is made mode 0600: the frontend must run as the same user (as under "
            "`grainhouse up`, which sets this to `<data dir>/run/relay/relay.sock`)."
        ),
    )
    relay_advertise: str = Field(
        "",
        description=(
            "host:port (or host alone: the relay's port is added), or `unix:<path>`, that "
            "OpenSession tells the frontend to dial for grain traffic. Empty: `unix:` and "
            "relay_socket when that is set, else the relay's own address, with a wildcard "
            "host (0.0.0.0, ::) read as 127.0.0.1. Set it when the relay listens on all "
            "interfaces, e.g. `grainmgr:7004` in compose."
        ),
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

    @field_validator("relay_socket")
    @classmethod
    def _socket_path(cls, value: str) -> str:
        value = value.strip()
        if value:
            if not value.startswith("/"):
                raise ValueError("must be an absolute path")
            if len(value.encode()) > MAX_UNIX_PATH:
                raise ValueError(f"a Unix socket path has at most {MAX_UNIX_PATH} bytes")
        return value

    @field_validator("relay_advertise")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        value = value.strip()
        if value.startswith(UNIX_PREFIX):
            if not value[len(UNIX_PREFIX) :].startswith("/"):
                raise ValueError("unix: must be followed by an absolute path")
        elif value:
            host, port = _split_advertise(value)
            if not host or "/" in host or " " in host:
                raise ValueError("must be host:port or host (no scheme, no path)")
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError("the port must be 1 to 65535")
        return value


_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
UNIX_PREFIX = "unix:"  # what the frontend dials as a Unix socket (grain_relay.relay_endpoint)
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its NUL


def _split_advertise(value: str) -> tuple[str, str]:
    """(host, port or ""): a bare IPv6 literal has colons but no brackets, so no port."""
    host, sep, port = value.rpartition(":")
    if not sep or (":" in host and not host.startswith("[")):
        return value, ""
    return host, port


def advertised_relay(advertise: str, bound: str, socket_path: str = "") -> str:
    """The relay address OpenSession hands out, from the setting and the bound address.

    `bound` is the relay's listening host:port (the real port, also when relay_listen said 0);
    `socket_path` the Unix socket it also listens on ("" for none). An explicit
    relay_advertise wins; else the Unix socket (local frontends: cheaper than loopback TCP);
    else the TCP address.
    """
    bound_host, _, bound_port = bound.rpartition(":")
    if advertise.startswith(UNIX_PREFIX):
        return advertise
    if not advertise and socket_path:
        return f"{UNIX_PREFIX}{socket_path}"
    if advertise:
        host, port = _split_advertise(advertise)
        return f"{host}:{port or bound_port}"
    if bound_host in _WILDCARDS:
        # Listening on every interface says nothing about where to dial; loopback at least
        # works for a frontend on the same host (anything else must set relay_advertise).
        bound_host = "[::1]" if ":" in bound_host else "127.0.0.1"
    return f"{bound_host}:{bound_port}"
