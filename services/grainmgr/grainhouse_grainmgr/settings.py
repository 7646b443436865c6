"""Settings of the grainmgr service (`GRAINHOUSE_GRAINMGR_*`).

Owns: the names, defaults and validation of grainmgr's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings


class GrainmgrSettings(ServiceSettings):
    service = "grainmgr"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of grainmgr's own login role (a secret)."
    )
