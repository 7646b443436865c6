"""gRPC helpers: a server with health, request ids, metrics and error mapping; client channels.

Owns: the interceptors that every service's gRPC edge runs through.
Trusts: servicers to raise `GrainhouseError` for expected failures.
Never: lets an unexpected exception's text reach a caller (it is logged, the caller gets
INTERNAL with a generic message).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the asyncio health servicer

from grainhouse_common import requestid
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.metrics import RpcMetrics

log = logging.getLogger("grainhouse.rpc")

# Largest message either side accepts; uploads are streamed in chunks well below this.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == requestid.GRPC_KEY:
            return requestid.accept(value if isinstance(value, str) else None)
    return requestid.new()


async def _fail(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, GrainhouseError):
        await context.abort(exc.grpc_code, exc.public_message)
    log.exception("unhandled error in %s", method, extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class _EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no types
    """Sets the request id, counts and times the call, maps errors once."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = _short(details.method)
        rid = _request_id(details)
        metrics = self.metrics

        def finish(start: float, context: grpc.aio.ServicerContext) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.calls.labels(method=method, code=name).inc()
            metrics.seconds.labels(method=method).observe(time.perf_counter() - start)

        def wrap_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = requestid.set_current(rid)
                start = time.perf_counter()
                try:
                    return await fn(request, context)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _fail(context, exc, method)
                finally:
                    finish(start, context)
                    requestid.reset(token)

            return run

        def wrap_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                token = requestid.set_current(rid)
                start = time.perf_counter()
                try:
                    async for item in fn(request, context):
                        yield item
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as exc:
                    await _fail(context, exc, method)
                finally:
                    finish(start, context)
                    requestid.reset(token)

            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )


async def stream_head(
    request_iterator: AsyncIterator[Any], part: str, noun: str
) -> tuple[Any, AsyncIterator[Any]]:
    """The first message of a client stream, which must set oneof `part` (metadata, options),
    and the iterator over the rest. INVALID with a readable message otherwise."""
    stream = aiter(request_iterator)
    try:
        first = await anext(stream)
    except StopAsyncIteration as exc:
        raise GrainhouseError(Kind.INVALID, f"empty {noun} stream") from exc
    if first.WhichOneof("part") != part:
        raise GrainhouseError(Kind.INVALID, f"the first message must be {part}")
    return getattr(first, part), stream


def server(metrics: RpcMetrics) -> tuple[grpc.aio.Server, HealthServicer]:
    """A grpc.aio server with the edge interceptor and the standard health service."""
    srv = grpc.aio.server(interceptors=[_EdgeInterceptor(metrics)], options=_OPTIONS)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    return srv, health


class _RequestIdClient(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]  # grpc has no types
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]  # grpc has no types
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]  # grpc has no types
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]  # grpc has no types
):
    """Adds the current request id (or a new one) to every outgoing call."""

    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[requestid.GRPC_KEY] = requestid.get() or requestid.new()
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def channel(addr: str) -> grpc.aio.Channel:
    """An insecure channel to a peer service on the internal network, with request ids."""
    return grpc.aio.insecure_channel(addr, options=_OPTIONS, interceptors=[_RequestIdClient()])


async def check_health(addr: str, timeout: float = 2.0) -> bool:
    """True when the service at `addr` answers the standard health check SERVING."""
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == SERVING)
