-- Packages installed on this server and the grains made from them (first version).
CREATE TABLE packages (
    package_id      text PRIMARY KEY,
    app_id          text NOT NULL,
    version         integer NOT NULL CHECK (version >= 0),
    title           text NOT NULL,
    installed_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, version)
);

CREATE TABLE grains (
    grain_id        text PRIMARY KEY,
    app_id          text NOT NULL,
    package_id      text NOT NULL REFERENCES packages (package_id),
    owner_id        text NOT NULL,
    title           text NOT NULL,
    state           text NOT NULL DEFAULT 'stopped',
    size_bytes      bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    trashed_at      timestamptz
);
CREATE INDEX grains_owner ON grains (owner_id);
