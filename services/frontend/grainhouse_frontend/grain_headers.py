"""What crosses into a grain and what comes back: the header rules of grain traffic.

Owns: which request headers reach a grain (hop-by-hop, platform credentials, platform cookies
and client-sent `X-Sandstorm-*` never do), the identity headers the platform adds (built once
per origin and cached decision), and what a grain's response loses and gains (hop-by-hop and
framing-policy headers out; the platform's CSP with `frame-ancestors`, no referrer and
`nosniff` in).
Trusts: auth's decision and grainmgr's session for the identity values (still stripped of
CR, LF and NUL: nothing may end a header line early); the ASGI server for having checked the
client's header names and values.
Never: forwards a platform cookie, an `Authorization` header, `Forwarded`/`X-Forwarded-For`
or a client's `X-Sandstorm-*` header to a grain; lets a grain's response drop the platform's
CSP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from starlette.types import Scope

from grainhouse_frontend.origins import Decision, Origin

# Hop-by-hop headers (RFC 9110 §7.6.1) end at this proxy, in both directions.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
# Never sent to a grain: platform credentials, and identity the client might try to forge.
STRIPPED_REQUEST = HOP_BY_HOP | {b"authorization", b"host", b"forwarded", b"x-forwarded-for"}
STRIPPED_RESPONSE = HOP_BY_HOP | {b"x-frame-options", b"referrer-policy"}
# A 204 or 304 has no body: a Content-Length on it (legal on a 304) would make the ASGI server
# wait for one.
STRIPPED_NO_BODY = STRIPPED_RESPONSE | {b"content-length"}
CHUNKED_HEAD_END = b"transfer-encoding: chunked\r\n\r\n"


class IdentityHeaders:
    """The identity headers for one origin under one cached decision (pairs and wire form)."""

    __slots__ = ("block", "decision", "pairs", "session")

    def __init__(
        self, decision: Decision, session: str, pairs: list[tuple[bytes, bytes]], block: bytes
    ) -> None:
        self.decision = decision
        self.session = session
        self.pairs = pairs
        self.block = block


class HeaderRules:
    def __init__(
        self, public_url: str, cookie_names: set[str], base_path: Callable[[Origin], str]
    ) -> None:
        self.cookie_names = cookie_names
        self.base_path = base_path
        self._identities: dict[str, IdentityHeaders] = {}
        self.csp = (
            "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; "
            "base-uri 'self'; form-action 'self'; object-src 'none'; "
            f"frame-ancestors {public_url.rstrip('/')}"
        )
        # Added to every grain response (built once: the same bytes for every request).
        self._walls = [
            (b"content-security-policy", self.csp.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-content-type-options", b"nosniff"),
        ]

    # -- into the grain ---------------------------------------------------------------------

    def identity(self, origin: Origin, decision: Decision) -> IdentityHeaders:
        """The identity headers of a request through `origin`, built once per decision."""
        cached = self._identities.get(origin.origin_id)
        if (
            cached is not None
            and cached.decision is decision
            and cached.session == origin.grainmgr_session
        ):
            return cached
        ident: Any = decision.identity
        add = {
            "x-sandstorm-username": quote(ident.display_name or "Anonymous", safe=""),
            "x-sandstorm-permissions": ",".join(decision.permissions),
            "x-sandstorm-session-id": origin.grainmgr_session,
            "x-sandstorm-tab-id": origin.tab_id,
            "x-sandstorm-session-type": origin.session_type,
            "x-sandstorm-base-path": self.base_path(origin),
        }
        if ident.user_id and not ident.is_anonymous:
            add["x-sandstorm-user-id"] = ident.user_id
        if ident.preferred_handle:
            add["x-sandstorm-preferred-handle"] = ident.preferred_handle
        # Values come from auth and grainmgr; still, nothing may end a header line early.
        pairs = [
            (k.encode(), v.encode("latin-1", "replace").translate(None, b"\r\n\0"))
            for k, v in add.items()
        ]
        block = b"".join(b"%s: %s\r\n" % pair for pair in pairs)
        made = IdentityHeaders(decision, origin.grainmgr_session, pairs, block)
        self._identities[origin.origin_id] = made
        return made

    def _crossing(self, raw: Any) -> Iterator[tuple[bytes, bytes]]:
        """The client's headers that may reach the grain, names lowercased, platform cookies
        taken out of `Cookie`."""
        for name, value in raw:
            lname = name.lower()
            if lname in STRIPPED_REQUEST or lname.startswith(b"x-sandstorm-"):
                continue
            if lname == b"cookie":
                value = self.strip_platform_cookies(value)
                if not value:
                    continue
            yield lname, value

    def request_headers(
        self, origin: Origin, decision: Decision, raw: list[tuple[bytes, bytes]], host: str
    ) -> list[tuple[bytes, bytes]]:
        """What crosses into the grain (for the WebSocket handshake): the client's headers
        minus what never crosses, then the identity headers."""
        out: list[tuple[bytes, bytes]] = [(b"host", host.encode("latin-1"))]
        out += self._crossing(raw)
        out += self.identity(origin, decision).pairs
        return out

    def request_head(
        self, origin: Origin, decision: Decision, scope: Scope, host: str, framing: bytes
    ) -> bytes:
        """The request head for the grain, as one bytes: the same rules as request_headers
        (names and values were checked for CR, LF and NUL by the ASGI server's parser)."""
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        parts = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\nhost: "]
        parts += (host.encode("latin-1"), b"\r\n")
        for lname, value in self._crossing(scope["headers"]):
            parts += (lname, b": ", value, b"\r\n")
        parts += (self.identity(origin, decision).block, framing)
        return b"".join(parts)

    def strip_platform_cookies(self, value: bytes) -> bytes:
        kept = []
        for part in value.decode("latin-1").split(";"):
            name = part.split("=", 1)[0].strip()
            if name and name not in self.cookie_names:
                kept.append(part.strip())
        return "; ".join(kept).encode("latin-1")

    # -- back from the grain ----------------------------------------------------------------

    def allowed_response_headers(self, raw: Any) -> list[tuple[bytes, bytes]]:
        """A grain's response headers minus what ends here (hop-by-hop, framing policy)."""
        return [
            (bytes(k).lower(), bytes(v))
            for k, v in raw
            if bytes(k).lower() not in STRIPPED_RESPONSE
        ]

    def response_headers(
        self, raw: list[tuple[bytes, bytes]], status: int
    ) -> list[tuple[bytes, bytes]]:
        # Names are lowercased bytes already (grain_upstream). The grain's own CSP stays (both
        # apply); ours adds frame-ancestors and the walls.
        drop = STRIPPED_RESPONSE if status not in (204, 304) else STRIPPED_NO_BODY
        out = [(k, v) for k, v in raw if k not in drop]
        out += self._walls
        return out

    # -- the cache ----------------------------------------------------------------------------

    def forget_expired(self, now: float) -> None:
        for origin_id, made in list(self._identities.items()):
            if made.decision.expires < now:
                del self._identities[origin_id]  # built again on the next request

    def clear(self) -> None:
        self._identities.clear()
