-- Visitors: accounts that came into being without an invitation (first email-link login of an
-- unknown address). They open what is shared with them but create no grains (see auth.proto
-- Account.can_create_grains). Every account that exists before this migration was invited or
-- set up, so the default keeps them full users.
ALTER TABLE accounts ADD COLUMN is_visitor boolean NOT NULL DEFAULT false;

-- Housekeeping (housekeeping.py) deletes expired rows in bounded batches; these indexes keep
-- each batch an index scan instead of a full scan of a table that only grows.
CREATE INDEX sessions_expiry ON sessions (least(idle_expires_at, absolute_expires_at));
CREATE INDEX tickets_expiry ON tickets (expires_at);
CREATE INDEX rate_limits_last_failure ON rate_limits (last_failure_at);
CREATE INDEX api_tokens_expiry ON api_tokens (expires_at);
CREATE INDEX grants_expiry ON grants (expires_at) WHERE expires_at IS NOT NULL;
