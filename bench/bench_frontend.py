"""Frontend figures: the token-authenticated grain list over HTTP, and the grain list page in
Chromium, each against a baseline measured in the same run.

Owns: nothing beyond its own temporary stack and data directory (removed at the end).
Trusts: `grainhouse up` (tests/support/stack.py) for the platform; wrk for HTTP load;
Debian's Chromium through Playwright for page figures.
Never: asserts a timing (benchmarks report, tests assert); leaves a process running.

1. `GET /api/v1/grains` with a Bearer token (auth's token check + grainmgr's listing, 20 grains)
   at 16 connections: req/s, p50, p99 (wrk --latency) against `GET /healthz` of the same
   frontend (no auth, no RPC) — the ratio is the cost of authentication and the listing.
2. The grain list page `/` for a user with 20 grains in Chromium: page weight (transferSize of
   the navigation and every resource, from performance entries; a fresh browser context per
   load, so nothing comes from the cache) and load time (navigation timing:
   domContentLoadedEventEnd, loadEventEnd), median of 5 loads, against the sign-in page `/login`
   (no session, no RPC) loaded the same way.

`BENCH_QUICK=1` (what `bench/run.py --quick` sets) shortens the wrk runs. Prints one JSON
object on stdout; progress on stderr. Needs `wrk` and /usr/bin/chromium
(tools/system-deps.sh; the e2e set-up installs chromium as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen import say, wrk  # noqa: E402 - bench/ is the script's own directory

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 - needs the repo root
from tests.integration.frontend.harness import (  # noqa: E402
    Client,
    build_probe,
    install_package,
    make_token,
    setup_admin,
)
from tests.support.stack import Stack, make_data_root  # noqa: E402

CONNECTIONS = 16
GRAINS = 20
LOADS = 5
EMAIL, PASSWORD = "admin@example.org", "correct horse battery"  # setup_admin's password
# What the page measurement reads once the load event has finished.
TIMING_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  return {
    transfer_bytes: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
    decoded_bytes: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0),
    resources: res.length,
    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    load_ms: nav.loadEventEnd,
  };
}"""


def api_figures(stack: Stack, token: str, seconds: int) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {token}"}
    say("wrk warm-up")
    wrk(stack.url + "/healthz", CONNECTIONS, 1, {})
    wrk(stack.url + "/api/v1/grains", CONNECTIONS, 1, bearer)
    say(f"wrk /healthz, {CONNECTIONS} connections, {seconds}s")
    base = wrk(stack.url + "/healthz", CONNECTIONS, seconds, {})
    say(f"wrk /api/v1/grains, {CONNECTIONS} connections, {seconds}s")
    grains = wrk(stack.url + "/api/v1/grains", CONNECTIONS, seconds, bearer)
    return {
        "connections": CONNECTIONS,
        "seconds": seconds,
        "baseline_healthz": base,
        "grains_with_token": grains,
        "ratio_req_per_s": round(grains["req_per_s"] / base["req_per_s"], 3),
        "added_p50_ms": round(grains["p50_ms"] - base["p50_ms"], 3),
        "added_p99_ms": round(grains["p99_ms"] - base["p99_ms"], 3),
    }


# -- Chromium -------------------------------------------------------------------------------


def page_loads(browser: Any, url: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """LOADS cold loads of `url` (a new context each: empty cache), medians of the figures."""
    runs = []
    for _ in range(LOADS):
        ctx = browser.new_context(storage_state=state)
        page = ctx.new_page()
        page.goto(url, wait_until="load")
        page.wait_for_function(
            "() => performance.getEntriesByType('navigation')[0].loadEventEnd > 0"
        )
        runs.append(page.evaluate(TIMING_JS))
        ctx.close()
    return {
        "loads": LOADS,
        "transfer_bytes_p50": statistics.median(r["transfer_bytes"] for r in runs),
        "decoded_bytes_p50": statistics.median(r["decoded_bytes"] for r in runs),
        "resources": runs[-1]["resources"],
        "dom_content_loaded_ms_p50": round(
            statistics.median(r["dom_content_loaded_ms"] for r in runs), 1
        ),
        "load_ms_p50": round(statistics.median(r["load_ms"] for r in runs), 1),
        "load_ms_all": [round(r["load_ms"], 1) for r in runs],
    }


def page_figures(stack: Stack) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(stack.url + "/login")
            page.fill("#email", EMAIL)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit] >> text=Sign in")
            page.wait_for_url(re.compile(r".*/$"))
            listed = page.locator("table tbody tr").count()
            state = ctx.storage_state()
            ctx.close()
            say(f"Chromium: /login x{LOADS} (baseline), / x{LOADS}")
            base = page_loads(browser, stack.url + "/login", None)
            grains = page_loads(browser, stack.url + "/", state)
        finally:
            browser.close()
    return {
        "grains_listed_on_page": listed,
        "baseline_login_page": base,
        "grain_list_page": grains,
        "ratio_load_ms": round(grains["load_ms_p50"] / base["load_ms_p50"], 3),
        "ratio_transfer_bytes": round(grains["transfer_bytes_p50"] / base["transfer_bytes_p50"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1"
    )
    args = parser.parse_args()
    seconds = 3 if args.quick else 8
    if shutil.which("wrk") is None:
        print(json.dumps({"error": "wrk is missing: run tools/system-deps.sh as root"}))
        return 1
    if not CHROMIUM.exists():
        print(json.dumps({"error": f"{CHROMIUM} is missing: apt-get install -y chromium"}))
        return 1
    work = Path(tempfile.mkdtemp(prefix="gh-bench-frontend-", dir="/tmp"))
    root = make_data_root("gh-bench-frontend-stack-")
    stack = Stack(root)
    result: dict[str, Any] = {"quick": args.quick, "grains": GRAINS}
    started = time.monotonic()
    try:
        say("starting the platform")
        stack.start()
        admin = setup_admin(stack, EMAIL)
        token = make_token(admin, "read")
        api = Client(stack.url, token=make_token(admin))
        app_id = install_package(api, build_probe(work))["app_id"]
        for i in range(GRAINS):
            made = api.api("POST", "/grains", {"app_id": app_id, "title": f"Grain {i:02d}"})
            if made.status != 201:
                raise RuntimeError(f"grain {i}: {made.status} {made.text[:200]}")
        listed = Client(stack.url, token=token).api("GET", "/grains").json()
        result["grains_listed_by_api"] = len(listed["items"])
        result["api"] = api_figures(stack, token, seconds)
        result["page"] = page_figures(stack)
    except Exception as exc:  # a bench reports what failed instead of a traceback only
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(stack.log()[-3000:])
        print(json.dumps(result, indent=2))
        return 1
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
