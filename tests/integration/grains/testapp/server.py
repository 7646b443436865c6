"""Test app for grainmgr's integration tests (stdlib only; runs inside a real grain).

Owns: files it is asked to write under /var.
Trusts: the X-Sandstorm-* headers (the test plays the frontend).
Never: listens anywhere but 127.0.0.1:$PORT.

Routes: GET /whoami (headers, pid, env as JSON), POST /upload (streams the body, answers
its size and sha256), GET /download?n=N (N bytes, streamed), GET /write?name=&data= (a file
in /var), GET /read?name=, GET /peek?pid=
(which /proc/<pid> files it can read), GET /crash (exits 3), GET /flood (endless body), GET /ws
(WebSocket echo that greets first; text "whoami" answers the upgrade's headers, "close:N" closes
with code N, "ping" pings and reports the pong).
"""

import base64
import errno
import hashlib
import json
import os
import socketserver
import struct
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PLATFORM = None  # platform_client.PlatformClient, made on the first /platform/ request
BOOT_ID = base64.b16encode(os.urandom(8)).decode()  # differs per app process
WS_MAGIC = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body, status=200, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/whoami":
            self.reply(
                {
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "pid": os.getpid(),
                    "boot": BOOT_ID,
                    "greeting": os.environ.get("PROBE_GREETING", ""),
                    "port": os.environ.get("PORT", ""),
                    "grainhouse_env": sorted(k for k in os.environ if k.startswith("GRAINHOUSE")),
                }
            )
        elif url.path == "/download":
            n = int(q.get("n", "0"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(range(256)) * (CHUNK // 256)
            left = n
            while left > 0:
                piece = block[: min(CHUNK, left)]
                self.wfile.write(piece)
                left -= len(piece)
        elif url.path == "/write":
            with open(os.path.join("/var", os.path.basename(q["name"])), "w") as f:
                f.write(q.get("data", ""))
            self.reply({"ok": True})
        elif url.path == "/fill":
            # n bytes into /var/<name>; the errno name if the write is refused (quota).
            try:
                with open(os.path.join("/var", os.path.basename(q["name"])), "wb") as f:
                    f.write(b"q" * int(q["n"]))
                self.reply({"ok": True})
            except OSError as exc:
                self.reply({"ok": False, "errno": errno.errorcode.get(exc.errno, "?")}, 507)
        elif url.path == "/read":
            try:
                with open(os.path.join("/var", os.path.basename(q["name"]))) as f:
                    self.reply({"data": f.read()})
            except FileNotFoundError:
                self.reply({"data": None}, 404)
        elif url.path == "/peek":
            # What this app can read of a process's /proc files (the grain's init is pid 1).
            found = {}
            for name in ("environ", "mem", "maps"):
                try:
                    with open(f"/proc/{int(q['pid'])}/{name}", "rb") as f:
                        if name != "mem":  # address 0 is not mapped: opening is the test
                            f.read(1)
                    found[name] = "ok"
                except OSError as exc:
                    found[name] = errno.errorcode.get(exc.errno, str(exc.errno))
            self.reply(found)
        elif url.path == "/crash":
            os._exit(3)
        elif url.path == "/flood":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            block = b"x" * CHUNK
            try:
                while True:
                    self.wfile.write(block)
            except OSError:
                return
        elif url.path == "/ws":
            self.websocket()
        elif url.path.startswith("/platform/"):
            self.platform_call(url.path[len("/platform/") :], q)
        else:
            self.reply({"error": "not found"}, 404)

    def platform_call(self, what, q):
        """Platform (grain.capnp) through the bridge's app socket: 200 and the answer, or 502
        and the error's text."""
        global PLATFORM
        try:
            if PLATFORM is None:
                import platform_client  # only probes that ask load pycapnp

                PLATFORM = platform_client.PlatformClient()
            if what == "identity":
                answer = PLATFORM.identity(q.get("session", ""))
            elif what == "awake":
                answer = PLATFORM.stay_awake(q.get("reason", ""))
            elif what == "release":
                answer = PLATFORM.release()
            elif what == "drop":
                answer = PLATFORM.drop()
            elif what == "usage":
                answer = PLATFORM.usage()
            elif what == "log":
                times = int(q.get("n", "1"))
                answer = PLATFORM.log(q.get("level", "info"), q.get("msg", ""), times)
            else:
                self.reply({"error": "not found"}, 404)
                return
        except Exception as exc:  # the test reads the error
            self.reply({"error": str(exc) or type(exc).__name__}, 502)
            return
        self.reply(answer)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        left = n
        while left > 0:
            chunk = self.rfile.read(min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self.reply({"bytes": n - left, "sha256": digest.hexdigest()})

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_MAGIC).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        send_frame(self.wfile, b"hello")
        while True:
            frame = read_frame(self.rfile)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 8:
                send_frame(self.wfile, b"", opcode=8)
                return
            if opcode == 1 and payload == b"whoami":  # the upgrade request's headers
                heads = {k.lower(): v for k, v in self.headers.items()}
                send_frame(self.wfile, json.dumps(heads).encode())
            elif opcode == 1 and payload.startswith(b"close:"):  # close with that code
                send_frame(self.wfile, struct.pack("!H", int(payload[6:])) + b"bye", opcode=8)
                read_frame(self.rfile)  # the peer's answering close
                return
            elif opcode == 1 and payload == b"ping":  # our ping must come back as a pong
                send_frame(self.wfile, b"are you there", opcode=9)
                answer = read_frame(self.rfile)
                send_frame(
                    self.wfile, b"pong:" + (answer[1] if answer and answer[0] == 10 else b"?")
                )
            else:  # binary stays binary
                send_frame(self.wfile, b"echo:" + payload, opcode=opcode)


def send_frame(w, payload, opcode=1):
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([n])
    elif n < 65536:
        header += bytes([126]) + struct.pack("!H", n)
    else:
        header += bytes([127]) + struct.pack("!Q", n)
    w.write(header + payload)
    w.flush()


def read_frame(r):
    head = r.read(2)
    if len(head) < 2:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", r.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", r.read(8))[0]
    mask = r.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = r.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    # A slow start on demand (PROBE_START_DELAY seconds before listening): cold-start tests.
    time.sleep(float(os.environ.get("PROBE_START_DELAY", "0")))
    socketserver.TCPServer.allow_reuse_address = True
    with Server(("127.0.0.1", int(os.environ["PORT"])), Handler) as server:
        server.serve_forever()
