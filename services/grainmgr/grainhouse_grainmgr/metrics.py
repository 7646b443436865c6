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
grains_starting = Gauge(
    "grainhouse_grainmgr_grains_starting",
    "Grains between the start request and the app listening (or the start failing).",
)
wake_locks = Gauge(
    "grainhouse_grainmgr_wake_locks",
    "Wake locks held by running grains (Platform.stayAwake): no idle stop while held.",
)
platform_calls_refused = Counter(
    "grainhouse_grainmgr_platform_calls_refused_total",
    "PlatformBackend calls refused because a grain called faster than its budget.",
)
sandbox_spawn_failures = Counter(
    "grainhouse_grainmgr_sandbox_spawn_failures_total",
    "Grain starts that failed before the app listened, by bounded reason.",
    ["reason"],
)

# The bounded `reason` values of sandbox_spawn_failures. The sandbox reports the checklist
# step that failed in its message ("sandbox set-up failed at <step>: ..."); the words below
# sort those steps (and the fork server's own refusals) into a handful of buckets.
SPAWN_FAILURE_REASONS = (
    "namespaces",  # creating namespaces or writing the uid/gid map (user namespaces blocked?)
    "mounts",  # a mount, pivot_root, /proc or /dev step (AppArmor, a read-only host path)
    "cgroup",  # creating or joining the grain's cgroup
    "seccomp",  # loading seccomp or Landlock, dropping privileges
    "exec_failed",  # the sandbox could not exec the bridge
    "spawn_refused",  # the fork server refused (no free uid, fds lost, launcher gone)
    "app_exited",  # the bridge or the app ended before the app listened
    "never_listened",  # the app did not listen within start_timeout_seconds
    "other",
)
_STEP_WORDS = (
    ("namespace", "namespaces"),  # first: that step's name also says "mount" and "cgroup"
    ("cgroup", "cgroup"),
    ("uid/gid map", "namespaces"),
    ("uid ", "namespaces"),
    ("seccomp", "seccomp"),
    ("landlock", "seccomp"),
    ("capabilit", "seccomp"),
    ("no_new_privs", "seccomp"),
    ("mount", "mounts"),
    ("pivot_root", "mounts"),
    ("/dev", "mounts"),
    ("/proc", "mounts"),
    ("root read-only", "mounts"),
    ("package and storage", "mounts"),
    ("loopback", "namespaces"),
    ("hostname", "namespaces"),
)


def spawn_failure_reason(kind: str, message: str) -> str:
    """The bounded reason for a SandboxError (its kind and operator message)."""
    text = message.lower()
    if "set-up failed at " in text:
        # Only the step's name, not the kernel's error text after it, picks the bucket.
        step = text.split("set-up failed at ", 1)[1].split(":", 1)[0]
        for word, reason in _STEP_WORDS:
            if step.startswith("exec ") or word in step:
                return "exec_failed" if step.startswith("exec ") else reason
        return "other"
    if "cgroup" in text:
        return "cgroup"
    if "uid/gid map" in text:
        return "namespaces"
    if kind in ("invalid", "unavailable"):
        return "spawn_refused"
    return "other"


def spawn_failed(reason: str) -> None:
    """Count one failed start; an unknown reason is counted as `other` (labels stay bounded)."""
    if reason not in SPAWN_FAILURE_REASONS:
        reason = "other"
    sandbox_spawn_failures.labels(reason=reason).inc()
