"""grainmgr's own Prometheus metrics (the default registry, served by grainhouse_common).

Owns: the names and labels of grainmgr's metrics.
Trusts: nothing.
Never: labels a metric with a grain id, user id, key or path (labels stay bounded).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

grains_running = Gauge("grainhouse_grainmgr_grains_running", "Grains running now.")
grain_starts = Counter(
    "grainhouse_grainmgr_grain_starts_total", "Grain starts by result.", ["result"]
)
grain_stops = Counter("grainhouse_grainmgr_grain_stops_total", "Grain ends by reason.", ["reason"])
start_seconds = Histogram(
    "grainhouse_grainmgr_grain_start_seconds",
    "From spawn to the app listening.",
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
relay_streams = Gauge("grainhouse_grainmgr_relay_streams", "Byte streams relayed now.")
relay_bytes = Counter(
    "grainhouse_grainmgr_relay_bytes_total", "Bytes relayed, by direction.", ["direction"]
)
relay_refused = Counter(
    "grainhouse_grainmgr_relay_refused_total", "Relay connections refused, by reason.", ["reason"]
)
grain_quota_exceeded = Counter(
    "grainhouse_grainmgr_grain_quota_exceeded_total",
    "Times a grain went over its /var quota (its /var turned read-only).",
)
