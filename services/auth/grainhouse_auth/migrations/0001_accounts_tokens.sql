-- Accounts and personal API tokens: the first tables of the auth schema.
-- Secrets are never stored: only SHA-256 of high-entropy random secrets.
CREATE TABLE accounts (
    account_id      text PRIMARY KEY,
    email           text UNIQUE,
    display_name    text NOT NULL,
    is_admin        boolean NOT NULL DEFAULT false,
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_id        text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    secret_hash     bytea NOT NULL UNIQUE,
    secret_hint     text NOT NULL,
    scopes          text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_tokens_account ON api_tokens (account_id);
