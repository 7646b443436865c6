"""Test app for backup consistency (stdlib only; runs inside a real grain).

Owns: /var/records/* and /var/latest.
Trusts: nothing.
Never: listens anywhere but 127.0.0.1:$PORT.

While it runs, a thread writes record files as fast as it can: first /var/records/<n> (n in
full, 4 KiB), then /var/latest = n by rename. So at any single instant: every record up to
`latest` is complete. A copy taken while the app runs (not from one instant) breaks that.
"""

import contextlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def writer():
    os.makedirs("/var/records", exist_ok=True)
    try:
        with open("/var/latest") as f:
            n = int(f.read())
    except (OSError, ValueError):
        n = 0
    while True:
        n += 1
        body = (str(n) + "\n").encode() * (4096 // (len(str(n)) + 1))
        with open(f"/var/records/{n}", "wb") as f:
            f.write(body)
        with open("/var/latest.tmp", "w") as f:
            f.write(str(n))
        os.replace("/var/latest.tmp", "/var/latest")
        if n % 2000 == 0:  # keep the grain small: drop old records, oldest first
            for old in range(n - 3999, n - 1999):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/var/records/{old}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = b"writing"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    threading.Thread(target=writer, daemon=True).start()
    with ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler) as server:
        server.serve_forever()
