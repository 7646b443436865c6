"""Settings of the auth service (`GRAINHOUSE_AUTH_*`).

Owns: the names, defaults and validation of auth's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    service = "auth"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of auth's own login role (a secret)."
    )
    operator_key_file: Path | None = Field(
        None,
        description="File holding the operator key (default <data_dir>/auth/operator.key; "
        "created at first start).",
    )
    token_default_ttl_seconds: int = Field(
        30 * 86400, gt=0, description="Lifetime of an API token when none is asked for."
    )
    token_max_ttl_seconds: int = Field(
        365 * 86400, gt=0, description="Longest lifetime an API token may be given."
    )
