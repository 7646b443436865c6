-- Backup archives this service holds, and schedules (first version).
CREATE TABLE backups (
    backup_id       text PRIMARY KEY,
    grain_id        text NOT NULL,
    owner_id        text NOT NULL,
    size_bytes      bigint NOT NULL DEFAULT 0,
    sha256          text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schedules (
    schedule_id     text PRIMARY KEY,
    owner_id        text NOT NULL,
    grain_id        text,
    every           text NOT NULL CHECK (every IN ('hourly', 'daily', 'weekly')),
    keep_last       integer NOT NULL DEFAULT 7 CHECK (keep_last > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
