"""`wrk` (Debian's package) as the load generator the HTTP benchmarks share.

Owns: running wrk and reading its report (req/s, p50, p99, errors) into a dict.
Trusts: wrk's output format (wrk 4.x with --latency).
Never: sleeps or retries on its own; a run that cannot be read fails loudly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def say(*what: object) -> None:
    """Progress for the human: stderr (stdout is the bench's JSON)."""
    print(*what, file=sys.stderr, flush=True)


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not found:
        raise ValueError(text)
    return float(found.group(1)) * _UNITS[found.group(2)]


def wrk(url: str, connections: int, seconds: int, headers: dict[str, str]) -> dict[str, Any]:
    # --timeout: a slow path must show in p99, not as reconnects (wrk drops at 2 s).
    argv = ["wrk", "--latency", "--timeout", "10s", "-t", "2", "-c", str(connections)]
    argv += ["-d", f"{seconds}s"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    if not (rate and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    result: dict[str, Any] = {
        "req_per_s": float(rate.group(1)),
        "p50_ms": round(_ms(p50.group(1)), 3),
        "p99_ms": round(_ms(p99.group(1)), 3),
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    if errors:
        result["non_2xx"] = int(errors.group(1))
    if sock_err:
        result["socket_errors"] = sock_err.group(1).strip()
    return result
