"""Settings of the backup service (`GRAINHOUSE_BACKUP_*`).

Owns: the names, defaults and validation of backup's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings


class BackupSettings(ServiceSettings):
    service = "backup"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of backup's own login role (a secret)."
    )
