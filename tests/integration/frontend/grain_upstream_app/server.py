"""Test app for the frontend's upstream HTTP/1.1 client (stdlib only; runs inside a real grain).

Owns: nothing (no state, no files).
Trusts: nothing it is sent; it reads only the request line and the framing headers.
Never: listens anywhere but 127.0.0.1:$PORT.

Speaks HTTP/1.1 by hand on purpose, so it can break it. Routes (any method):
/ok (a Content-Length answer, keep-alive), /chunked (a chunked answer with trailers),
/echo (echoes the request body back chunked and says how it came: `x-request-framing`),
/close-after (a keep-alive answer, then the connection is closed anyway),
/garbage, /huge-head, /bad-chunk, /early-close, /silent-close (broken answers, then close),
/head (the request head as the grain got it, as the body), /until-close (a body without
framing, ended by closing the connection).
"""

import os
import socket
import threading

MAX_HEAD = 1 << 20


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        more = conn.recv(65536)
        if not more or len(buf) > MAX_HEAD:
            return None, b""
        buf += more
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def recv_exact(conn, buf, n):
    while len(buf) < n:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("short body")
        buf += more
    return buf[:n], buf[n:]


def recv_line(conn, buf):
    while b"\r\n" not in buf:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("short chunk line")
        buf += more
    line, _, rest = buf.partition(b"\r\n")
    return line, rest


def read_body(conn, headers, buf):
    """(body, rest, framing) of a request."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line, buf = recv_line(conn, buf)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while True:
                    line, buf = recv_line(conn, buf)
                    if not line:
                        return body, buf, "chunked"
            data, buf = recv_exact(conn, buf, size + 2)
            body += data[:-2]
    n = int(headers.get("content-length", "0"))
    body, buf = recv_exact(conn, buf, n)
    return body, buf, "length" if "content-length" in headers else "none"


def answer(conn, path, body, framing):
    """True if the connection may carry another request."""
    if path == "/ok":
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfine\n"
        )
        return True
    if path == "/chunked":
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nchunk \r\n8;x=y\r\nby chunk\r\n1\r\n\n\r\n0\r\nX-Trailer: dropped\r\n\r\n"
        )
        return True
    if path == "/echo":
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"X-Request-Framing: " + framing.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        out = [head] + [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
        conn.sendall(b"".join(out))
        return True
    if path == "/close-after":
        # A keep-alive answer, then the connection ends (as an app's idle timeout would).
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbye.\n")
    elif path == "/garbage":
        conn.sendall(b"\x00\x01 this is not HTTP at all \xff\r\n\r\n")
    elif path == "/huge-head":
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (200 * 1024) + b"\r\n\r\n")
    elif path == "/bad-chunk":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    elif path == "/early-close":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a little")
    elif path == "/silent-close":
        pass
    elif path == "/until-close":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\n")
    else:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True
    return False


def serve(conn):
    buf = b""
    try:
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body, buf, framing = read_body(conn, headers, buf)
            if target.split("?")[0] == "/head":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))
                continue
            if not answer(conn, target.split("?")[0], body, framing):
                return
    except (OSError, ValueError):
        return
    finally:
        conn.close()


if __name__ == "__main__":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(os.environ["PORT"])))
    listener.listen(128)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()
