#!/usr/bin/env python3
"""`grainhouse-healthcheck`: the container healthcheck of every Grainhouse service image.

Owns: nothing; it asks one question and exits 0 (healthy) or 1 (not healthy).
Trusts: the standard `grpc.health.v1.Health` answer of a gRPC service, or the status code
of the frontend's `GET /healthz`.
Never: prints a secret, retries (Docker retries by itself), or waits longer than --timeout.

Usage:
  grainhouse-healthcheck grpc HOST:PORT      # auth, grainmgr, backup
  grainhouse-healthcheck http URL            # frontend: http://127.0.0.1:8080/healthz
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request


def check_grpc(addr: str, timeout: float) -> bool:
    # Imported here: the frontend image's check needs only the standard library.
    from grainhouse_common.rpc import check_health

    return bool(asyncio.run(check_health(addr, timeout=timeout)))


def check_http(url: str, timeout: float) -> bool:
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"grainhouse-healthcheck: not an http(s) URL: {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - scheme checked above
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grainhouse-healthcheck", description=__doc__)
    parser.add_argument("kind", choices=("grpc", "http"))
    parser.add_argument("target", help="HOST:PORT for grpc, a URL for http")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    ok = (
        check_grpc(args.target, args.timeout)
        if args.kind == "grpc"
        else check_http(args.target, args.timeout)
    )
    print(f"{args.kind} {args.target}: {'healthy' if ok else 'NOT healthy'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
