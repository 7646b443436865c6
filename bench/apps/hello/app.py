"""Bench app: hello world on uvicorn, and the same with ~1 ms of CPU per request (/cpu).

Owns: nothing (no state, no files).
Trusts: nothing it is sent (it reads only the path).
Never: writes anywhere; listens anywhere but where uvicorn is told.

A bare ASGI callable, so that the figures measure uvicorn and the platform, not a framework.
"""

import time

HELLO = b"hello, world\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(HELLO)).encode())]
CPU_SECONDS = 0.001


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/cpu":
        # CPU time of this thread, not wall time: the same work however busy the machine is.
        end = time.thread_time() + CPU_SECONDS
        while time.thread_time() < end:
            pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": HELLO})
