"""Settings of the auth service (`GRAINHOUSE_AUTH_*`).

Owns: the names, defaults and validation of auth's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: shows a secret value (database URL) in a message or log line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from grainhouse_common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    service = "auth"

    database_url: SecretStr = Field(
        description="PostgreSQL URL of auth's own login role (a secret)."
    )
    operator_key_file: Path | None = Field(
        None,
        description="File holding the operator key (default <data_dir>/auth/operator.key; "
        "created at first start).",
    )
    token_default_ttl_seconds: int = Field(
        30 * 86400, gt=0, description="Lifetime of an API token when none is asked for."
    )
    token_max_ttl_seconds: int = Field(
        365 * 86400, gt=0, description="Longest lifetime an API token may be given."
    )
    session_idle_seconds: int = Field(
        14 * 86400, gt=0, description="A session unused this long ends (GetSession touch resets)."
    )
    session_absolute_seconds: int = Field(
        30 * 86400, gt=0, description="A session ends this long after login, however active."
    )
    setup_link_ttl_seconds: int = Field(3600, gt=0, description="Default setup link lifetime.")
    invitation_ttl_seconds: int = Field(7 * 86400, gt=0, description="Default invitation life.")
    email_code_ttl_seconds: int = Field(900, gt=0, description="Lifetime of a mailed login code.")
    share_link_max_ttl_seconds: int = Field(
        365 * 86400, gt=0, description="Longest lifetime a share link or grain token may have."
    )
    authorize_cache_seconds: int = Field(
        30, ge=0, description="How long the frontend may cache an Authorize answer."
    )
    origin_idle_seconds: int = Field(
        3600,
        ge=60,
        description="A grain origin (ui-<id> host) not resolved by any frontend this long ends.",
    )
    login_free_failures: int = Field(5, ge=0, description="Failures before backoff starts.")
    login_block_after: int = Field(20, gt=0, description="Failures after which a key is blocked.")
    login_block_seconds: int = Field(3600, gt=0, description="How long a blocked key waits.")
    login_base_delay_seconds: float = Field(
        1.0, gt=0, description="First backoff after the free failures; doubles each time."
    )
    login_max_delay_seconds: int = Field(300, gt=0, description="Longest backoff before a block.")
    visitor_signup: bool = Field(
        True,
        description="An email login link to an address without an account creates a visitor "
        "account (opens what is shared with it, creates no grains); false: no account, no link.",
    )
    housekeeping_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="How often expired sessions, tickets, tokens, share links and old "
        "rate-limit rows are deleted (first run shortly after start).",
    )
    housekeeping_grace_seconds: int = Field(
        7 * 86400,
        ge=0,
        description="Ended or expired sessions, expired or revoked API tokens, share links, grain "
        "tokens, setup links and invitations are kept this long before housekeeping deletes them "
        "(a stale credential still known is refused without counting as a guess).",
    )
    housekeeping_batch_rows: int = Field(
        1000, gt=0, description="Rows housekeeping deletes per statement (bounded batches)."
    )
    smtp_host: str = Field("", description="SMTP server for login links; empty: no mail.")
    smtp_port: int = Field(587, gt=0, lt=65536, description="SMTP port.")
    smtp_username: str = Field("", description="SMTP login; empty: no authentication.")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password (a secret).")
    smtp_sender: str = Field("grainhouse@localhost", description="From: address of mails.")
    smtp_starttls: bool = Field(True, description="Use STARTTLS on the SMTP connection.")
    oidc_providers: SecretStr = Field(
        SecretStr(""),
        description="OpenID Connect providers as JSON (a secret: holds client secrets): "
        '{"<name>": {"issuer", "client_id", "client_secret", "redirect_uris": [...], "scopes"}}.',
    )
