"""RFC 9457 problem details: the one shape of every REST API error.

Owns: the translation of errors into `application/problem+json` responses.
Trusts: `GrainhouseError.public_message` and peers' gRPC details as safe to show.
Never: shows a stack trace, a foreign exception's text or a secret to a client.
"""

from __future__ import annotations

import logging
import re

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from grainhouse_common import requestid
from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error

log = logging.getLogger("grainhouse.frontend.problem")
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://grainhouse.invalid/problems/"  # stable identifiers, not fetched
_RETRY_IN = re.compile(r"try again in (\d{1,6}) s")

_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    411: "Length required",
    412: "Precondition failed",
    415: "Unsupported media type",
    422: "Unprocessable content",
    413: "Too large",
    429: "Too many requests",
    500: "Internal error",
    501: "Not implemented",
    503: "Service unavailable",
}


def problem(status: int, detail: str, kind: str | None = None) -> JSONResponse:
    body = {
        "type": TYPE_BASE + (kind or str(status)),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    rid = requestid.get()
    if rid:
        body["request_id"] = rid
    headers = {"WWW-Authenticate": 'Bearer realm="grainhouse"'} if status == 401 else None
    if status == 429:
        # Auth's rate limits say "try again in N s" (ratelimit.check); RFC 9110 Retry-After.
        wait = _RETRY_IN.search(detail)
        headers = {"Retry-After": wait.group(1) if wait else "1"}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def on_grainhouse_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GrainhouseError)
    return problem(exc.http_status, exc.public_message, exc.kind.value)


async def on_rpc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        return problem(501, "this operation is not implemented yet", "not_implemented")
    err = from_rpc_error(exc)
    if err.kind is Kind.INTERNAL:
        log.error("peer failed: %s", exc.code().name)
    return problem(err.http_status, err.public_message, err.kind.value)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem(500, "internal error", "internal")


HANDLERS = {
    GrainhouseError: on_grainhouse_error,
    grpc.aio.AioRpcError: on_rpc_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
