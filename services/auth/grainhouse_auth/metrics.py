"""auth's own Prometheus metrics (the default registry, served by grainhouse_common).

Owns: the names and labels of auth's metrics.
Trusts: callers to name a method and reason from the tuples below.
Never: labels a metric with an email, account id, address, token or secret (labels stay
bounded: an unknown method or reason is counted as `other`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Counter

from grainhouse_common.errors import GrainhouseError, Kind

T = TypeVar("T")

LOGIN_METHODS = ("password", "totp", "email", "oidc", "token", "other")
LOGIN_FAILURE_REASONS = (
    "bad_credentials",  # wrong password, unknown account, wrong code, unknown link or token
    "disabled",  # the credentials were right but the account is disabled
    "rate_limited",  # refused by the rate limit before the credentials were looked at
    "not_allowed",  # e.g. an OIDC identity no account uses and no invitation covers
    "other",
)

# How a session was opened (logins.py `_open`); a second factor adds "+totp" to the first.
LOGIN_SUCCESS_METHODS = (
    "password",
    "email",
    "oidc",
    "setup",  # the first admin's account, made from the setup token
    "invitation",  # an account made by redeeming an invitation
    "dev",
    "other",
)

logins = Counter(
    "grainhouse_auth_logins_total",
    "Sessions opened by a successful sign-in, by method and whether a second factor was used.",
    ["method", "second_factor"],
)

login_failures = Counter(
    "grainhouse_auth_login_failures_total",
    "Failed sign-ins and bearer-token checks, by method and bounded reason.",
    ["method", "reason"],
)

# How a failure the flow raised reads as a reason (kinds not listed are not login failures:
# an INVALID request never got as far as checking credentials).
_KIND_REASON = {
    Kind.UNAUTHENTICATED: "bad_credentials",
    Kind.OVERLOADED: "rate_limited",
    Kind.PERMISSION: "not_allowed",
}


def login_failed(method: str, reason: str) -> None:
    """Count one failed sign-in."""
    login_failures.labels(
        method=method if method in LOGIN_METHODS else "other",
        reason=reason if reason in LOGIN_FAILURE_REASONS else "other",
    ).inc()


def login_succeeded(method: str) -> None:
    """Count one sign-in that opened a session (`method` as logins.py names it)."""
    first, plus, factor = method.partition("+")
    logins.labels(
        method=first if first in LOGIN_SUCCESS_METHODS else "other",
        second_factor="totp" if plus and factor == "totp" else ("other" if plus else "none"),
    ).inc()


async def counted(method: str, step: Awaitable[T]) -> T:
    """Await `step` (a rate-limit check, a bearer lookup); count the failure it raises."""
    try:
        return await step
    except GrainhouseError as exc:
        reason = _KIND_REASON.get(exc.kind)
        if reason is not None:
            login_failed(method, reason)
        raise
