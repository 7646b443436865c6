"""The REST client of the `grainhouse` command: one login context, JSON in and out, streams.

Owns: the login context (GRAINHOUSE_URL / GRAINHOUSE_TOKEN, else the file written by
`grainhouse login`: `$XDG_CONFIG_HOME/grainhouse/context.json`, mode 0600), the mapping of HTTP
answers to exit codes.
Trusts: the server named by the context (HTTPS in production; plain HTTP only as given).
Never: prints the token; follows a redirect to another host with it; reads a whole upload into
memory (files stream in 256 KiB blocks).

Exit codes of every REST command (documented in docs/api.md):
  0 ok · 1 the server refused (4xx not listed below) · 2 bad input (usage) ·
  3 not signed in, or the token may not do this (401/403) · 4 not found (404) ·
  5 conflict or precondition (409/412/422) · 6 server or network unavailable (5xx, connection).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 256 * 1024
TIMEOUT = 60.0


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0, exit_code: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


def exit_code_for(status: int) -> int:
    if status in (401, 403):
        return 3
    if status == 404:
        return 4
    if status in (409, 412, 422):
        return 5
    if status >= 500 or status == 0:
        return 6
    return 1


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "grainhouse" / "context.json"


def save_context(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url.rstrip("/"), "token": token}, f)
    return path


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Client:
    def __init__(self, url: str, token: str, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(f"not an http(s) URL: {url!r}", exit_code=2)
        self.url = url.rstrip("/")
        self.parts = parts
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_context(cls, url: str | None = None, token: str | None = None) -> Client:
        url = url or os.environ.get("GRAINHOUSE_URL", "")
        token = token or os.environ.get("GRAINHOUSE_TOKEN", "")
        if not (url and token):
            path = config_path()
            if path.is_file():
                saved = json.loads(path.read_text())
                url = url or saved.get("url", "")
                token = token or saved.get("token", "")
        if not url or not token:
            raise ApiError(
                "not signed in: run `grainhouse login`, or set GRAINHOUSE_URL and GRAINHOUSE_TOKEN",
                exit_code=3,
            )
        return cls(url, token)

    def _conn(self) -> http.client.HTTPConnection:
        host, port = self.parts.hostname or "", self.parts.port
        if self.parts.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": "grainhouse-cli/0.1",
            **(extra or {}),
        }

    def request(
        self,
        method: str,
        path: str,
        doc: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Reply:
        body = None if doc is None else json.dumps(doc).encode()
        hdrs = self._headers(headers)
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            conn = self._conn()
            conn.request(method, self.parts.path + path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}", exit_code=6) from None
        if reply.status not in ok:
            raise self._error(reply)
        return reply

    def _error(self, reply: Reply) -> ApiError:
        detail = ""
        try:
            doc = reply.json()
            if isinstance(doc, dict):
                detail = str(doc.get("detail") or doc.get("title") or "")
        except ValueError:
            detail = reply.body[:200].decode("utf-8", "replace")
        return ApiError(
            f"{detail or 'request failed'} (HTTP {reply.status})",
            reply.status,
            exit_code_for(reply.status),
        )

    def upload(
        self,
        path: str,
        source: BinaryIO,
        size: int,
        progress: Callable[[int], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = self._headers(headers)
        hdrs["Content-Type"] = "application/octet-stream"
        hdrs["Content-Length"] = str(size)
        try:
            conn = self._conn()
            conn.putrequest("POST", self.parts.path + path)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            while block := source.read(BLOCK):
                conn.send(block)
                if progress:
                    progress(len(block))
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"upload to {self.url} failed: {exc}", exit_code=6) from None
        if reply.status >= 300:
            raise self._error(reply)
        return reply

    def download(
        self, path: str, dest: BinaryIO, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Stream a GET body to `dest`; progress(done, total or 0). Returns bytes written."""
        try:
            conn = self._conn()
            conn.request("GET", self.parts.path + path, headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                raise self._error(Reply(resp.status, {}, resp.read()))
            total = int(resp.getheader("content-length") or 0)
            done = 0
            while block := resp.read(BLOCK):
                dest.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"download from {self.url} failed: {exc}", exit_code=6) from None
        return done
