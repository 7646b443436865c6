-- Grain origins (auth.proto "Grain origins"): the record behind `ui-<origin id>.<wildcard host>`,
-- shared by every frontend. The origin id is a 128-bit secret: only its SHA-256 is kept. The
-- record names the credential it was made from by kind and id (never its secret), so a logout
-- or revocation of that credential ends the origin (origins.py resolves it again each time).
CREATE TABLE origins (
    origin_hash      bytea PRIMARY KEY,
    grain_id         text NOT NULL,
    tab_id           text NOT NULL,
    session_type     text NOT NULL CHECK (session_type IN ('normal', 'api')),
    credential_kind  text NOT NULL
        CHECK (credential_kind IN ('session', 'api_token', 'share_link', 'grain_token')),
    credential_id    text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    idle_expires_at  timestamptz NOT NULL,
    closed_at        timestamptz
);
-- Housekeeping deletes dead origins in batches (see housekeeping.py).
CREATE INDEX origins_idle_expiry ON origins (idle_expires_at);
CREATE INDEX origins_credential ON origins (credential_id);
