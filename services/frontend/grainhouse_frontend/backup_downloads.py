"""Archive downloads: a stored backup as application/zip, whole or one byte range, streamed.

Owns: the HTTP Range rules of archive downloads (REST and the web UI's download link share
them) and the shape of a backup id the frontend accepts.
Trusts: backup's GetBackup and DownloadBackup, which filter by the owner id given here
(another owner's backup is NOT_FOUND, so ids cannot be probed).
Never: holds an archive whole (it streams in backup's ≤ 1 MiB chunks); names a storage path.

Decisions written down here: `ETag` is the archive's SHA-256 (a strong validator: the bytes
never change); one byte range per request (a multi-range header is ignored and the whole file
is sent, as RFC 9110 §14.2 allows); `If-Range` with anything but the current ETag sends the
whole file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.problem import problem
from grainhouse_proto import backup_pb2 as bpb

DOWNLOAD_TIMEOUT = 6 * 3600  # a slow client on a multi-GiB archive; cancelled on close
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Backup, grain and schedule ids as the frontend passes them on (anything else: NOT_FOUND).
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


async def backup_info(backup: Any, backup_id: str, account_id: str) -> bpb.DownloadHeader:
    """The backup's record and file name (what a whole download's header would say)."""
    if not ID_RE.match(backup_id):
        raise GrainhouseError(Kind.NOT_FOUND, "no such backup")
    info: bpb.DownloadHeader = await backup.GetBackup(
        bpb.GetBackupRequest(backup_id=backup_id, owner_account_id=account_id), timeout=10
    )
    return info


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) inclusive for one satisfiable range; None: send everything; "416"."""
    m = _RANGE.match(header.replace(" ", ""))
    if m is None:
        return None  # not a single bytes range: ignored (RFC 9110 §14.2)
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "416"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        return "416"
    return start, min(end, size - 1)


async def download_response(
    backup: Any, request: Request, backup_id: str, account_id: str
) -> Response:
    """The archive as application/zip, whole (200) or one range (206), streamed."""
    head = await backup_info(backup, backup_id, account_id)
    info = head.backup
    size = info.size_bytes
    etag = f'"{info.sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{head.filename}"',
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    wanted: tuple[int, int] | str | None = None
    sent_range = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if sent_range and (if_range is None or if_range.strip() == etag):
        wanted = parse_range(sent_range, size)
    if wanted == "416":
        reply = problem(416, f"the range is outside the archive ({size} bytes)")
        reply.headers["Content-Range"] = f"bytes */{size}"
        reply.headers["Accept-Ranges"] = "bytes"
        return reply
    status = 200
    offset, length = 0, size
    if isinstance(wanted, tuple):
        offset, length = wanted[0], wanted[1] - wanted[0] + 1
        status = 206
        headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
    headers["Content-Length"] = str(length)
    if length == 0:
        return Response(b"", status_code=status, media_type="application/zip", headers=headers)
    call = backup.DownloadBackup(
        bpb.DownloadBackupRequest(backup_id=backup_id, owner_account_id=account_id,
                                  offset=offset, length=length),
        timeout=DOWNLOAD_TIMEOUT,
    )  # fmt: skip
    try:
        first = await call.read()  # the header: errors (gone meanwhile) surface before a byte
        if first is grpc.aio.EOF or first.header.length != length:
            raise GrainhouseError(Kind.INTERNAL, "backup sent an unexpected download header")
    except BaseException:
        call.cancel()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                yield msg.data
        finally:
            call.cancel()

    return StreamingResponse(body(), status_code=status, media_type="application/zip",
                             headers=headers)  # fmt: skip
