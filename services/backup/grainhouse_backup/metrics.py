"""Prometheus metrics of the backup service (docs/metrics.md lists them).

Owns: the backup-specific metric families.
Trusts: callers to pass the bounded label values below.
Never: labels by grain, account, backup or schedule id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRIGGERS = ("manual", "scheduled")
OUTCOMES = ("ok", "failed")
RESTORE_OUTCOMES = ("ok", "rejected", "failed")

RUNS = Counter(
    "grainhouse_backup_runs_total", "Backup runs by trigger and outcome.", ["trigger", "outcome"]
)
RUN_SECONDS = Histogram(
    "grainhouse_backup_run_duration_seconds",
    "Time a backup run took, successful or not.",
    ["trigger"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
ARCHIVE_BYTES = Histogram(
    "grainhouse_backup_archive_size_bytes",
    "Size of each archive written.",
    buckets=tuple(float(1 << n) for n in range(10, 41, 3)),
)
WRITTEN_BYTES = Counter("grainhouse_backup_written_bytes_total", "Archive bytes written.")
RESTORES = Counter("grainhouse_backup_restores_total", "Restores by outcome.", ["outcome"])
LAST_SUCCESS = Gauge(
    "grainhouse_backup_last_success_timestamp_seconds",
    "Unix time of the last successful backup run.",
)
SCHEDULER_LAST_RUN = Gauge(
    "grainhouse_backup_scheduler_last_run_timestamp_seconds",
    "Unix time the scheduler last looked for due work.",
)
SCHEDULES_OVERDUE = Gauge(
    "grainhouse_backup_schedules_overdue",
    "Schedules whose run is late by more than one interval.",
)
STORAGE_AVAILABLE = Gauge(
    "grainhouse_backup_storage_available_bytes", "Free bytes on the archive filesystem."
)
STORAGE_CAPACITY = Gauge(
    "grainhouse_backup_storage_capacity_bytes", "Size in bytes of the archive filesystem."
)

for _t in TRIGGERS:
    for _o in OUTCOMES:
        RUNS.labels(trigger=_t, outcome=_o)
for _o in RESTORE_OUTCOMES:
    RESTORES.labels(outcome=_o)
