"""Prometheus metrics helpers: build info, the /metrics listener, shared metric families.

Owns: the process's `/metrics` HTTP listener and the families created here.
Trusts: callers to pass bounded label values (route templates, method names, outcomes).
Never: uses a grain id, user id, token or raw path as a label value.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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
    service: str = field(default="")  # names the db pool families (empty: not exported)


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
        service,
    )


# -- database pool, read at scrape time ------------------------------------------------------

# (suffix, help, label names) of the pool families, under `grainhouse_<svc>_db_pool_`.
DB_POOL_FAMILIES = (
    ("connections", "Connections in the pool, by state (in_use, idle).", ("state",)),
    ("max_connections", "Configured pool size limit.", ()),
    ("waiting_requests", "Callers waiting for a free connection.", ()),
)

PoolStats = Callable[[], Mapping[str, int]]


class DbPoolCollector(Collector):
    """Turns psycopg_pool's `get_stats()` into gauges when Prometheus scrapes.

    Read at scrape time (on the /metrics thread), so the figures are never stale and no
    task polls the pool. `get_stats()` only reads counters and queue lengths.
    """

    def __init__(self, service: str, stats: PoolStats) -> None:
        self.prefix = f"grainhouse_{service}_db_pool_"
        self.stats = stats

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            suffix: GaugeMetricFamily(self.prefix + suffix, text, labels=list(labels))
            for suffix, text, labels in DB_POOL_FAMILIES
        }

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        try:
            stats = self.stats()
        except Exception:  # a pool being closed: skip its figures, keep the rest of the scrape
            return iter(())
        size = stats.get("pool_size", 0)  # connections open now, lent out or not
        idle = stats.get("pool_available", 0)
        families["connections"].add_metric(["in_use"], max(size - idle, 0))
        families["connections"].add_metric(["idle"], idle)
        families["max_connections"].add_metric([], stats.get("pool_max", 0))
        families["waiting_requests"].add_metric([], stats.get("requests_waiting", 0))
        return iter(families.values())


_POOL_COLLECTORS: dict[str, DbPoolCollector] = {}
_POOL_LOCK = threading.Lock()


def watch_db_pool(service: str, stats: PoolStats) -> DbPoolCollector:
    """Export `stats` (a pool's `get_stats`) as the service's db_pool families.

    One collector per service and process: a second pool of the same service (a test that
    builds a Database twice) takes over the families instead of registering them twice.
    """
    with _POOL_LOCK:
        collector = _POOL_COLLECTORS.get(service)
        if collector is None:
            collector = DbPoolCollector(service, stats)
            REGISTRY.register(collector)
            _POOL_COLLECTORS[service] = collector
        else:
            collector.stats = stats
        return collector
