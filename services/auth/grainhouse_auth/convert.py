"""Domain values to `grainhouse.auth.v1` messages (one direction: auth never parses its own).

Owns: the field-by-field mapping of accounts, sessions, principals, tokens and grants.
Trusts: the values it is given are already decided.
Never: puts a hash, a seed or a secret into a message (secrets are set by the caller, once).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from grainhouse_auth import logins, sessions, tokens
from grainhouse_auth.accounts import Account
from grainhouse_auth.principals import Principal
from grainhouse_auth.sharing import GrantView
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.timestamps import timestamp as ts
from grainhouse_proto import auth_pb2

T = TypeVar("T")

SCOPE_TO_PB = {
    "": auth_pb2.SCOPE_UNSPECIFIED,
    "read": auth_pb2.SCOPE_READ,
    "write": auth_pb2.SCOPE_WRITE,
    "admin": auth_pb2.SCOPE_ADMIN,
}
SCOPE_FROM_PB = {v: k for k, v in SCOPE_TO_PB.items() if k}
KIND_TO_PB = {
    "session": auth_pb2.PRINCIPAL_KIND_SESSION,
    "api_token": auth_pb2.PRINCIPAL_KIND_API_TOKEN,
    "share_link": auth_pb2.PRINCIPAL_KIND_SHARE_LINK,
    "grain_token": auth_pb2.PRINCIPAL_KIND_GRAIN_API_TOKEN,
}
DENY_TO_PB = {
    "unauthenticated": auth_pb2.DENY_REASON_UNAUTHENTICATED,
    "no_access": auth_pb2.DENY_REASON_NO_ACCESS,
    "unknown_grain": auth_pb2.DENY_REASON_UNKNOWN_GRAIN,
    "wrong_grain": auth_pb2.DENY_REASON_WRONG_GRAIN,
    "account_disabled": auth_pb2.DENY_REASON_ACCOUNT_DISABLED,
    "insufficient_scope": auth_pb2.DENY_REASON_INSUFFICIENT_SCOPE,
}
DEFAULT_PAGE, MAX_PAGE = 50, 500


def account(a: Account) -> auth_pb2.Account:
    msg = auth_pb2.Account(
        account_id=a.account_id,
        email=a.email,
        display_name=a.display_name,
        preferred_handle=a.preferred_handle,
        is_admin=a.is_admin,
        totp_enabled=a.totp_enabled,
        has_password=a.has_password,
        disabled=a.disabled,
        can_create_grains=a.can_create_grains,
        is_visitor=a.is_visitor,
    )
    msg.created_at.CopyFrom(ts(a.created_at))
    if a.last_login_at is not None:
        msg.last_login_at.CopyFrom(ts(a.last_login_at))
    return msg


def session(s: sessions.Session) -> auth_pb2.Session:
    msg = auth_pb2.Session(
        session_id=s.session_id,
        account_id=s.account_id,
        login_method=s.login_method,
        user_agent=s.user_agent,
        remote_addr=s.remote_addr,
    )
    msg.created_at.CopyFrom(ts(s.created_at))
    msg.last_seen_at.CopyFrom(ts(s.last_seen_at))
    msg.idle_expires_at.CopyFrom(ts(s.idle_expires_at))
    msg.absolute_expires_at.CopyFrom(ts(s.absolute_expires_at))
    return msg


def principal(p: Principal) -> auth_pb2.Principal:
    msg = auth_pb2.Principal(
        kind=KIND_TO_PB[p.kind],
        account_id=p.account_id,
        credential_id=p.credential_id,
        scope=SCOPE_TO_PB[p.scope],
        grain_id=p.grain_id,
        is_admin=p.is_admin,
    )
    if p.expires_at is not None:
        msg.expires_at.CopyFrom(ts(p.expires_at))
    return msg


def api_token(t: tokens.Token) -> auth_pb2.ApiToken:
    msg = auth_pb2.ApiToken(
        token_id=t.token_id,
        account_id=t.account_id,
        name=t.name,
        scopes=[SCOPE_TO_PB[s] for s in t.scopes],
        secret_hint=t.secret_hint + "…",
    )
    msg.created_at.CopyFrom(ts(t.created_at))
    msg.expires_at.CopyFrom(ts(t.expires_at))
    if t.last_used_at is not None:
        msg.last_used_at.CopyFrom(ts(t.last_used_at))
    return msg


def new_session(done: logins.LoggedIn) -> auth_pb2.NewSession:
    return auth_pb2.NewSession(
        session_secret=done.secret, session=session(done.session), account=account(done.account)
    )


def login_result(outcome: logins.Outcome) -> auth_pb2.LoginResult:
    if isinstance(outcome, logins.LoggedIn):
        return auth_pb2.LoginResult(session=new_session(outcome))
    challenge = auth_pb2.SecondFactorChallenge(challenge_secret=outcome.secret)
    challenge.expires_at.CopyFrom(ts(outcome.expires_at))
    return auth_pb2.LoginResult(second_factor=challenge)


def grant(v: GrantView) -> auth_pb2.Grant:
    g = v.grant
    msg = auth_pb2.Grant(
        grant_id=g.grant_id,
        grain_id=v.grain_id,
        role=g.role,
        granted_by_account_id=g.granted_by,
        parent_grant_id=g.parent_id or "",
    )
    if g.grantee.kind == "account":
        msg.account_id = g.grantee.id
    elif g.grantee.kind == "share_link":
        msg.share_link_id = g.grantee.id
    else:
        msg.grain_api_token_id = g.grantee.id
    if v.meta is not None:
        msg.label = v.meta.label
        msg.grantee_display_name = v.meta.grantee_display_name
        msg.created_at.CopyFrom(ts(v.meta.created_at))
    return msg


def page_size(asked: int) -> int:
    return DEFAULT_PAGE if asked == 0 else min(asked, MAX_PAGE)


def cursor_in(page_token: str) -> str:
    if not page_token:
        return ""
    try:
        text = base64.urlsafe_b64decode(page_token.encode()).decode()
        stamp, sep, _ = text.partition("|")
        datetime.fromisoformat(stamp)
    except ValueError:
        raise GrainhouseError(Kind.INVALID, "page_token: not a token this server made") from None
    if not sep:
        raise GrainhouseError(Kind.INVALID, "page_token: not a token this server made")
    return text


def cursor_out(created_at: datetime, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{item_id}".encode()).decode()


def page_out(
    found: Sequence[T], size: int, key: Callable[[T], tuple[datetime, str]]
) -> tuple[Sequence[T], str]:
    """The page of `found` (fetched with `size + 1` rows) and the next page token ("" = last)."""
    if len(found) > size:
        return found[:size], cursor_out(*key(found[size - 1]))
    return found, ""
