-- Backups carry what BackupInfo shows; tasks; schedules with retention and next run.
ALTER TABLE backups
    ADD COLUMN grain_title  text    NOT NULL DEFAULT '',
    ADD COLUMN app_id       text    NOT NULL DEFAULT '',
    ADD COLUMN app_version  bigint  NOT NULL DEFAULT 0,
    ADD COLUMN app_title    text    NOT NULL DEFAULT '',
    ADD COLUMN file_count   bigint  NOT NULL DEFAULT 0,
    ADD COLUMN schedule_id  text,
    ADD COLUMN note         text    NOT NULL DEFAULT '',
    -- "<schedule>/<grain>/<slot>" for scheduled runs: at most one backup per job (exactly once).
    ADD COLUMN job_key      text    UNIQUE;
CREATE INDEX backups_owner_created ON backups (owner_id, created_at DESC);
CREATE INDEX backups_schedule ON backups (schedule_id) WHERE schedule_id IS NOT NULL;

CREATE TABLE tasks (
    task_id         text PRIMARY KEY,
    kind            smallint NOT NULL,
    state           smallint NOT NULL,
    owner_id        text NOT NULL,
    grain_id        text NOT NULL DEFAULT '',
    backup_id       text NOT NULL DEFAULT '',
    request_key     text NOT NULL DEFAULT '',
    job_key         text UNIQUE,
    bytes_done      bigint NOT NULL DEFAULT 0,
    bytes_total     bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    error_refusal   smallint NOT NULL DEFAULT 0,
    error_message   text NOT NULL DEFAULT '',
    error_entry     text NOT NULL DEFAULT '',
    error_retryable boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX tasks_request_key ON tasks (owner_id, kind, request_key) WHERE request_key <> '';

ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_keep_last_check;
ALTER TABLE schedules
    ALTER COLUMN keep_last SET DEFAULT 0,
    ADD CONSTRAINT schedules_keep_last_check CHECK (keep_last >= 0),
    ADD COLUMN account_scope text,
    ADD COLUMN keep_daily    integer NOT NULL DEFAULT 0 CHECK (keep_daily >= 0),
    ADD COLUMN keep_weekly   integer NOT NULL DEFAULT 0 CHECK (keep_weekly >= 0),
    ADD COLUMN next_run_at   timestamptz,
    ADD COLUMN last_run_at   timestamptz,
    ADD COLUMN last_task_ids text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT schedules_scope CHECK ((grain_id IS NULL) <> (account_scope IS NULL)),
    ADD CONSTRAINT schedules_some_rule CHECK (keep_last + keep_daily + keep_weekly > 0);
CREATE INDEX schedules_due ON schedules (next_run_at);
