"""Prometheus metrics helpers: build info, the /metrics listener, shared metric families.

Owns: the process's `/metrics` HTTP listener and the families created here.
Trusts: callers to pass bounded label values (route templates, method names, outcomes).
Never: uses a grain id, user id, token or raw path as a label value.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from grainhouse_common import __version__

BUILD_INFO = Gauge(
    "grainhouse_build_info",
    "Always 1; labels tell which build and service this process is.",
    ["service", "version", "python"],
)

# Buckets for request latencies: from sub-millisecond gRPC calls to slow installs.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class MetricsListener:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(service: str, addr: str) -> MetricsListener:
    """Start the /metrics listener (a daemon thread) and set build info."""
    BUILD_INFO.labels(service=service, version=__version__, python=platform.python_version()).set(1)
    host, port = split_addr(addr)
    server, thread = start_http_server(port, addr=host)
    return MetricsListener(server, thread)


@dataclass(frozen=True)
class RpcMetrics:
    """gRPC server metrics of one service (labels: method name, status code)."""

    calls: Counter
    seconds: Histogram


def rpc_metrics(service: str) -> RpcMetrics:
    return RpcMetrics(
        Counter(
            f"grainhouse_{service}_grpc_requests_total",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
        ),
        Histogram(
            f"grainhouse_{service}_grpc_request_duration_seconds",
            "Time to handle a gRPC call, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
        ),
    )


@dataclass(frozen=True)
class DependencyMetrics:
    """Health of the things a service leans on (database, NATS)."""

    up: Gauge
    nats_errors: Counter


def dependency_metrics(service: str) -> DependencyMetrics:
    return DependencyMetrics(
        Gauge(
            f"grainhouse_{service}_dependency_up",
            "1 when the dependency answers, 0 when it does not.",
            ["dependency"],
        ),
        Counter(
            f"grainhouse_{service}_nats_errors_total",
            "NATS publish or consume errors, by operation.",
            ["operation"],
        ),
    )
