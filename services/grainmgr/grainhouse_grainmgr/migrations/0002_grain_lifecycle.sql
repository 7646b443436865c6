-- What the grains issue needs beyond 0001: package facts for listing, grain lifecycle columns,
-- and grains that outlive a forcibly uninstalled package.
ALTER TABLE packages
    ADD COLUMN marketing_version text NOT NULL DEFAULT '',
    ADD COLUMN manifest jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN size_bytes bigint NOT NULL DEFAULT 0;

ALTER TABLE grains DROP CONSTRAINT IF EXISTS grains_package_id_fkey;
ALTER TABLE grains ALTER COLUMN package_id DROP NOT NULL;
ALTER TABLE grains
    ADD COLUMN app_version integer NOT NULL DEFAULT 0,
    ADD COLUMN app_title text NOT NULL DEFAULT '',
    ADD COLUMN last_error text NOT NULL DEFAULT '',
    ADD COLUMN trash_expires_at timestamptz;
CREATE INDEX grains_app ON grains (app_id);
CREATE INDEX grains_trash ON grains (trash_expires_at) WHERE trash_expires_at IS NOT NULL;
