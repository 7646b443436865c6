"""The GrainManager's snapshot transfer RPCs (ExportGrain, ImportGrain) as plain handlers.

Owns: the translation between grain archive parts (grainmgr.proto GrainArchivePart) and
snapshots.py's entries, data and trailer, both ways; how an import's parts are batched onto
a worker thread; which installed package an import is adopted under.
Trusts: service.py to hold the grain still around an export (transfers.Snapshots.hold) and to
encode the grain rows it gets back; snapshots.py for the archive format and every per-entry
check; transfers.py for the staging directory and adopting a checked import.
Never: holds lifecycle logic (grains.py and transfers.py do); maps errors beyond raising
GrainhouseError (grainhouse_common.rpc's interceptor maps kinds to gRPC status once).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.timestamps import maybe_timestamp as stamp
from grainhouse_grainmgr import snapshots
from grainhouse_grainmgr.grains import Grains
from grainhouse_grainmgr.store import GrainRow, PackageRow, Store
from grainhouse_grainmgr.transfers import Snapshots
from grainhouse_proto import grainmgr_pb2 as pb

IMPORT_BATCH_BYTES = 4 * 1024 * 1024  # apply an import's parts in batches of this much data
IMPORT_BATCH_PARTS = 512  # ... or this many parts


async def export_parts(
    store: Store, row: GrainRow, grain: pb.Grain, var: Path
) -> AsyncGenerator[pb.GrainArchivePart, None]:
    """The archive of a held grain: header (with `grain`, row encoded), files, data, trailer."""
    package = await store.get_package(row.package_id or "")
    yield pb.GrainArchivePart(
        header=pb.GrainArchiveHeader(
            format_version=snapshots.FORMAT_VERSION,
            grain=grain,
            app_id=row.app_id,
            app_version=row.app_version,
            app_marketing_version=package.marketing_version if package else "",
            snapshot_at=stamp(dt.datetime.now(dt.UTC)),
        )
    )
    async for kind, value in snapshots.stream_snapshot(var):
        if kind == "file":
            yield pb.GrainArchivePart(
                file=pb.FileEntry(
                    path=value.path,
                    type=value.type,
                    mode=value.mode,
                    modified_at=stamp(snapshots.ts(value.mtime)),
                    size_bytes=value.size,
                    symlink_target=value.target,
                )
            )
        elif kind == "data":
            yield pb.GrainArchivePart(data=value)
        else:
            yield pb.GrainArchivePart(trailer=pb.GrainArchiveTrailer(**value))


async def import_grain(
    grains: Grains, snaps: Snapshots, request_iterator: AsyncIterator[pb.ImportGrainRequest]
) -> GrainRow:
    """ImportGrain's work: check and write the archive in a staging dir, adopt it as a grain."""
    options, stream = await rpc.stream_head(request_iterator, "options", "import")
    if not options.owner_account_id:
        raise GrainhouseError(Kind.INVALID, "options.owner_account_id is required")
    staging = snaps.new_import_dir()
    try:
        return await _import(grains, snaps, stream, options, staging)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _import(
    grains: Grains, snaps: Snapshots, stream: AsyncIterator[Any], options: Any, staging: Any
) -> GrainRow:
    async def parts() -> AsyncIterator[Any]:
        async for message in stream:
            which = message.WhichOneof("part")
            if which == "archive_parts":  # several parts grouped (GrainArchiveParts)
                if not message.archive_parts.parts:
                    raise snapshots.invalid("an empty group of parts")
                for part in message.archive_parts.parts:
                    yield part
            elif which == "archive":
                yield message.archive
            else:
                raise GrainhouseError(Kind.INVALID, "options may be sent only once")

    it = aiter(parts())
    try:
        head = await anext(it)
    except StopAsyncIteration as exc:
        raise GrainhouseError(Kind.INVALID, "archive refused: no header") from exc
    if head.WhichOneof("part") != "header":
        raise GrainhouseError(Kind.INVALID, "archive refused: the header must come first")
    header = head.header
    if header.format_version > snapshots.FORMAT_VERSION or header.format_version < 1:
        raise GrainhouseError(Kind.CONFLICT, "archive format is newer than this server")
    package = await _import_package(grains.store, options.package_id, header)
    writer = snapshots.ImportWriter(
        staging / "var",
        grains.settings.var_quota_bytes,
        hash_data=not options.content_verified,
    )
    writer.root.mkdir(mode=0o700)
    # Parts are applied in batches on a worker thread, one batch while the next arrives:
    # a thread hop per part (10,000 small files = 20,000 parts) cost more than the work.
    trailer = None
    batch: list[Any] = []
    size = 0
    applying: asyncio.Future[None] | None = None
    try:
        async for part in it:
            if trailer is not None or part.WhichOneof("part") == "header":
                raise snapshots.invalid("parts after the trailer, or a second header")
            batch.append(part)
            size += len(part.data)
            if part.WhichOneof("part") == "trailer":
                trailer = part
            if size >= IMPORT_BATCH_BYTES or len(batch) >= IMPORT_BATCH_PARTS:
                if applying is not None:
                    await applying
                applying = asyncio.ensure_future(asyncio.to_thread(_apply, writer, batch))
                batch, size = [], 0
        if applying is not None:
            await applying
        applying = None
        if batch:
            await asyncio.to_thread(_apply, writer, batch)
    finally:
        if applying is not None:  # never abort (and rmtree) under a running batch
            await asyncio.wait([applying])
            if not applying.cancelled():
                applying.exception()  # already failing: this one is not news
        writer.abort()
    if trailer is None:
        raise snapshots.invalid("no trailer: the archive is truncated")
    title = options.title or header.grain.title
    return await snaps.adopt(staging, header.app_id, package, options.owner_account_id, title)


async def _import_package(store: Store, package_id: str, header: Any) -> PackageRow:
    if package_id:
        package = await store.get_package(package_id)
        if package is None:
            raise GrainhouseError(Kind.CONFLICT, "app not installed")
    else:
        package = await store.current_package(header.app_id)
        if package is None:
            raise GrainhouseError(Kind.CONFLICT, "app not installed")
    if package.app_id != header.app_id:
        raise GrainhouseError(Kind.CONFLICT, "the package is of another app")
    if package.version < header.app_version:
        raise GrainhouseError(Kind.CONFLICT, "app too old for this archive")
    return package


def _apply(writer: snapshots.ImportWriter, parts: list[Any]) -> None:
    """Apply archive parts (file, data, trailer) in order; runs on a worker thread."""
    for part in parts:
        which = part.WhichOneof("part")
        if which == "data":
            writer.data(part.data)
        elif which == "file":
            f = part.file
            writer.file(
                snapshots.Entry(
                    f.path,
                    f.type,
                    f.mode,
                    f.modified_at.seconds + f.modified_at.nanos / 1e9,
                    f.size_bytes,
                    f.symlink_target,
                )
            )
        elif which == "trailer":
            t = part.trailer
            writer.finish(
                {
                    "file_count": t.file_count,
                    "total_bytes": t.total_bytes,
                    "data_sha256": t.data_sha256,
                }
            )
        else:
            raise snapshots.invalid("an empty part")
