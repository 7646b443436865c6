-- Credentials beside accounts, server-side sessions, one-time tickets, rate limits, and the
-- sharing graph. Every secret is stored as SHA-256 (high-entropy) or argon2id (passwords).
ALTER TABLE accounts
    ADD COLUMN preferred_handle  text NOT NULL DEFAULT '',
    ADD COLUMN app_user_id       text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
    ADD COLUMN is_dev            boolean NOT NULL DEFAULT false,
    ADD COLUMN last_login_at     timestamptz;
CREATE UNIQUE INDEX accounts_app_user_id ON accounts (app_user_id);

-- One account, several ways to log in: each row is one of them.
CREATE TABLE credentials (
    account_id      text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('password', 'totp', 'totp_pending', 'oidc')),
    -- password: argon2id hash; totp*: base32 seed; oidc: "<provider>\n<subject>"
    secret          text NOT NULL,
    totp_last_step  bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, kind)
);
CREATE UNIQUE INDEX credentials_oidc ON credentials (secret) WHERE kind = 'oidc';

CREATE TABLE recovery_codes (
    account_id      text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    code_hash       bytea NOT NULL,
    used_at         timestamptz,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE sessions (
    session_id          text PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    secret_hash         bytea NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    login_method        text NOT NULL,
    user_agent          text NOT NULL DEFAULT '',
    remote_addr         text NOT NULL DEFAULT '',
    ended_at            timestamptz
);
CREATE INDEX sessions_account ON sessions (account_id);

-- Single-use secrets: setup links, invitations, email login codes, TOTP challenges, OIDC states.
CREATE TABLE tickets (
    ticket_id       text PRIMARY KEY,
    kind            text NOT NULL
                    CHECK (kind IN ('setup', 'invitation', 'email', 'challenge', 'oidc_state')),
    secret_hash     bytea NOT NULL UNIQUE,
    account_id      text REFERENCES accounts (account_id) ON DELETE CASCADE,
    email           text NOT NULL DEFAULT '',
    grants_admin    boolean NOT NULL DEFAULT false,
    created_by      text NOT NULL DEFAULT '',
    data            jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- Failures per key ("login:acct:<sha>", "login:addr:<ip>", ...), shared by every auth instance.
CREATE TABLE rate_limits (
    key             text PRIMARY KEY,
    failures        integer NOT NULL DEFAULT 0,
    last_failure_at timestamptz NOT NULL DEFAULT now(),
    blocked_until   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE grains (
    grain_id         text PRIMARY KEY,
    owner_account_id text NOT NULL REFERENCES accounts (account_id),
    app_id           text NOT NULL DEFAULT '',
    title            text NOT NULL DEFAULT '',
    view_info        bytea NOT NULL,  -- grainhouse.common.v1.ViewInfo, serialized
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Share links and grain API tokens: secrets bound to one grain; access comes from their grant.
CREATE TABLE grain_credentials (
    credential_id   text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('share_link', 'grain_token')),
    grain_id        text NOT NULL REFERENCES grains (grain_id) ON DELETE CASCADE,
    secret_hash     bytea NOT NULL UNIQUE,
    secret_hint     text NOT NULL,
    last_used_at    timestamptz
);

CREATE TABLE grants (
    grant_id        text PRIMARY KEY,
    grain_id        text NOT NULL REFERENCES grains (grain_id) ON DELETE CASCADE,
    grantee_kind    text NOT NULL CHECK (grantee_kind IN ('account', 'share_link', 'grain_token')),
    grantee_id      text NOT NULL,
    role            text NOT NULL,
    granted_by      text NOT NULL,
    parent_id       text,
    label           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz
);
CREATE INDEX grants_grain ON grants (grain_id);
CREATE INDEX grants_grantee ON grants (grantee_kind, grantee_id);
