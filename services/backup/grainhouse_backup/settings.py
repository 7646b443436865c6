"""Settings of the backup service (`GRAINHOUSE_BACKUP_*`).

Owns: the names, defaults and validation of backup's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL, encryption passphrase) in a message or log line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings

GIB = 1024**3


class BackupSettings(ServiceSettings):
    service = "backup"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of backup's own login role (a secret)."
    )
    storage_dir: Path | None = Field(
        None, description="Where archives are kept. Default: <data_dir>/backup."
    )
    encryption_key_file: Path | None = Field(
        None, description="File with a 32-byte key (raw or hex): archives are encrypted at rest."
    )
    encryption_passphrase: SecretStr | None = Field(
        None, description="Passphrase for encryption at rest (scrypt); instead of a key file."
    )
    max_archive_bytes: int = Field(10 * GIB, gt=0, description="Largest upload accepted.")
    max_total_bytes: int = Field(
        10 * GIB, gt=0, description="Largest total uncompressed size of an archive."
    )
    max_ratio: int = Field(200, gt=1, description="Largest compression ratio of an entry > 1 MiB.")
    max_files: int = Field(1_000_000, gt=0, description="Most entries in an archive.")
    validator_memory_bytes: int = Field(
        1024**3, gt=64 * 1024**2, description="Address-space limit of the validator process."
    )
    validator_timeout_seconds: float = Field(
        900, gt=0, description="Wall-clock limit of one restore's validation and import."
    )
    compress_level: int = Field(6, ge=0, le=9, description="Deflate level of archives (zip's 6).")
    max_tasks_per_owner: int = Field(4, gt=0, description="Backups/restores running per owner.")
    scheduler_interval_seconds: float = Field(
        30, gt=0, description="How often the scheduler looks for due schedules."
    )
    job_ack_wait_seconds: float = Field(
        60, gt=0, description="A job not acknowledged (or touched) this long is redelivered."
    )
    job_max_deliver: int = Field(5, gt=0, description="Attempts of one scheduled job.")
    schedule_period_override_seconds: int = Field(
        0, ge=0, description="Tests only: every schedule runs at this interval instead."
    )
