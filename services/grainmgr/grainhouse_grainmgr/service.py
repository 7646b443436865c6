"""The GrainManager gRPC servicer: decode, call packages.py / grains.py, encode.

Owns: the translation between grainmgr.proto messages and the core's values (pages, states,
timestamps); archive parts are service_snapshots.py's.
Trusts: its callers (frontend, backup) as the proto says; nothing else.
Never: holds lifecycle logic (grains.py does); maps errors itself beyond raising
GrainhouseError (grainhouse_common.rpc's interceptor maps kinds to gRPC status once).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.timestamps import maybe_timestamp as stamp
from grainhouse_grainmgr import service_snapshots
from grainhouse_grainmgr.authlink import view_info_pb
from grainhouse_grainmgr.grains import Grains
from grainhouse_grainmgr.packages import Packages, Upload, view_info
from grainhouse_grainmgr.relay import Relay
from grainhouse_grainmgr.settings import advertised_relay
from grainhouse_grainmgr.store import GrainRow, PackageRow
from grainhouse_grainmgr.transfers import Snapshots
from grainhouse_proto import common_pb2, grainmgr_pb2_grpc
from grainhouse_proto import grainmgr_pb2 as pb

STATES = {
    "stopped": pb.GRAIN_STATE_STOPPED,
    "starting": pb.GRAIN_STATE_STARTING,
    "running": pb.GRAIN_STATE_RUNNING,
    "stopping": pb.GRAIN_STATE_STOPPING,
    "crashed": pb.GRAIN_STATE_CRASHED,
    "trashed": pb.GRAIN_STATE_TRASHED,
}
SESSION_TYPES = {pb.SESSION_TYPE_NORMAL: "normal", pb.SESSION_TYPE_API: "api"}
DEFAULT_PAGE, MAX_PAGE = 50, 500
LOG_POLL_SECONDS = 0.2
MAX_LOG_CHUNK = 64 * 1024
MAX_BACKLOG = 1024 * 1024


def page(request: Any) -> tuple[int, int]:
    size = request.page_size or DEFAULT_PAGE
    size = min(size, MAX_PAGE)
    if not request.page_token:
        return 0, size
    try:
        offset = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
    except (ValueError, UnicodeError) as exc:
        raise GrainhouseError(Kind.INVALID, "page.page_token is not valid") from exc
    if offset < 0:
        raise GrainhouseError(Kind.INVALID, "page.page_token is not valid")
    return offset, size


def next_token(offset: int, size: int, got: int) -> str:
    if got < size:
        return ""
    return base64.urlsafe_b64encode(str(offset + size).encode()).decode()


def grain_pb(row: GrainRow, awake_reasons: Iterable[str] = ()) -> pb.Grain:
    """A grain as the API shows it; `awake_reasons`: its wake locks' reasons while it runs."""
    return pb.Grain(
        grain_id=row.grain_id,
        app_id=row.app_id,
        package_id=row.package_id or "",
        app_version=row.app_version,
        owner_account_id=row.owner_id,
        title=row.title,
        created_at=stamp(row.created_at),
        last_used_at=stamp(row.last_used_at),
        size_bytes=row.size_bytes,
        state=STATES.get(row.state, pb.GRAIN_STATE_STOPPED),
        trashed_at=stamp(row.trashed_at),
        trash_expires_at=stamp(row.trash_expires_at),
        app_title=row.app_title,
        last_error=row.last_error if row.state == "crashed" else "",
        awake_reasons=list(awake_reasons),
    )


def package_pb(row: PackageRow) -> pb.Package:
    manifest = row.manifest
    return pb.Package(
        package_id=row.package_id,
        app_id=row.app_id,
        version=row.version,
        marketing_version=row.marketing_version,
        title=row.title,
        description=manifest.get("description", ""),
        actions=[
            pb.Action(
                index=i,
                name=a.get("noun", ""),
                title=f"New {a.get('noun', '')}",
                description=a.get("description", ""),
            )
            for i, a in enumerate(manifest.get("actions", []))
        ],
        view_info=view_info_pb(view_info(manifest)),
        installed_at=stamp(row.installed_at),
        size_bytes=row.size_bytes,
        grain_count=row.grain_count,
        is_current=row.is_current,
    )


# Stream keys one OpenStream may issue (grainmgr.proto, OpenStreamRequest.count).
MAX_STREAM_KEYS = 64


def ticket_pb(relay_address: str, ticket: Any) -> pb.StreamTicket:
    return pb.StreamTicket(
        relay_address=relay_address,
        stream_key_secret=ticket.secret,
        expires_at=stamp(ticket.expires_at),
    )


class GrainManagerService(grainmgr_pb2_grpc.GrainManagerServicer):
    def __init__(
        self,
        packages: Packages,
        grains: Grains,
        snaps: Snapshots,
        relay: Relay,
        relay_advertise: str = "",
    ) -> None:
        self.packages = packages
        self.grains = grains
        self.snaps = snaps
        self.relay = relay
        self.relay_advertise = relay_advertise  # GRAINHOUSE_GRAINMGR_RELAY_ADVERTISE

    def relay_address(self) -> str:
        """Where the frontend dials for grain traffic (the relay binds once the service runs)."""
        return advertised_relay(self.relay_advertise, self.relay.address, self.relay.socket_path)

    def _grain_pb(self, row: GrainRow) -> pb.Grain:
        """grain_pb with what only the running grain knows: its wake locks' reasons."""
        running = self.grains.running.get(row.grain_id)
        return grain_pb(row, running.wake_locks.values() if running is not None else ())

    # -- packages -----------------------------------------------------------------------------

    async def InstallPackage(
        self, request_iterator: AsyncIterator[pb.InstallPackageRequest], context: Any
    ) -> pb.InstallPackageResponse:
        meta, stream = await rpc.stream_head(request_iterator, "metadata", "upload")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise GrainhouseError(Kind.INVALID, "metadata may be sent only once")
                yield message.chunk

        result = await self.packages.install(
            Upload(meta.size_bytes, meta.sha256, meta.allow_downgrade), chunks()
        )
        row = result.row
        return pb.InstallPackageResponse(
            app_id=row.app_id,
            package_id=row.package_id,
            version=row.version,
            title=row.title,
            upgraded=result.upgraded,
            already_installed=result.already_installed,
            package=package_pb(row),
        )

    async def ListPackages(
        self, request: pb.ListPackagesRequest, context: Any
    ) -> pb.ListPackagesResponse:
        offset, size = page(request.page)
        rows = await self.packages.store.list_packages(
            request.app_id, request.include_old_versions, offset, size
        )
        return pb.ListPackagesResponse(
            packages=[package_pb(r) for r in rows],
            page=common_pb2.PageResponse(next_page_token=next_token(offset, size, len(rows))),
        )

    async def GetPackage(self, request: pb.GetPackageRequest, context: Any) -> pb.Package:
        return package_pb(await self.packages.get(request.package_id))

    async def UninstallPackage(
        self, request: pb.UninstallPackageRequest, context: Any
    ) -> pb.UninstallPackageResponse:
        orphaned = await self.packages.uninstall(request.package_id, request.force)
        return pb.UninstallPackageResponse(orphaned_grains=orphaned)

    # -- grains -------------------------------------------------------------------------------

    async def CreateGrain(self, request: pb.CreateGrainRequest, context: Any) -> pb.Grain:
        which = request.WhichOneof("action")
        row = await self.grains.create(
            request.app_id,
            request.package_id,
            request.action_index if which == "action_index" else None,
            request.action_name if which == "action_name" else None,
            request.title,
            request.owner_account_id,
        )
        return self._grain_pb(row)

    async def GetGrain(self, request: pb.GetGrainRequest, context: Any) -> pb.Grain:
        return self._grain_pb(await self.grains.get(request.grain_id))

    async def ListGrains(
        self, request: pb.ListGrainsRequest, context: Any
    ) -> pb.ListGrainsResponse:
        offset, size = page(request.page)
        trashed = (
            "only" if request.only_trashed else "include" if request.include_trashed else "exclude"
        )
        await self.grains.writes_settled()  # cold opens answered before their state write
        rows = await self.grains.store.list_grains(
            request.owner_account_id, request.app_id, trashed, offset, size
        )
        return pb.ListGrainsResponse(
            grains=[self._grain_pb(r) for r in rows],
            page=common_pb2.PageResponse(next_page_token=next_token(offset, size, len(rows))),
        )

    async def UpdateGrain(self, request: pb.UpdateGrainRequest, context: Any) -> pb.Grain:
        if not request.HasField("title"):
            return self._grain_pb(await self.grains.get(request.grain_id))
        return self._grain_pb(await self.grains.update_title(request.grain_id, request.title))

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Any
    ) -> pb.OpenSessionResponse:
        session_type = SESSION_TYPES.get(request.session_type)
        if session_type is None:
            raise GrainhouseError(Kind.INVALID, "session_type is required")
        ident = request.identity
        params = {
            "identity": {
                "userId": ident.user_id,
                "displayName": ident.display_name or "Anonymous",
                "preferredHandle": ident.preferred_handle,
                "pictureUrl": ident.picture_url,
                "isAnonymous": ident.is_anonymous,
            },
            "permissions": list(request.permissions),
            "tabId": request.tab_id,
            "sessionType": session_type,
            "basePath": request.base_path,
            "userAgent": request.user_agent,
            "acceptLanguages": list(request.accept_languages),
        }
        opened = await self.grains.open_session(request.grain_id, params)
        return pb.OpenSessionResponse(
            session_id=opened.session_id,
            stream=ticket_pb(self.relay_address(), opened.ticket),
            view_info=view_info_pb(opened.view_info),
            grain=self._grain_pb(opened.row),
            idle_timeout_seconds=int(self.grains.settings.idle_stop_seconds),
        )

    async def OpenStream(self, request: pb.OpenStreamRequest, context: Any) -> pb.StreamTicket:
        count = request.count or 1
        if count > MAX_STREAM_KEYS:
            raise GrainhouseError(
                Kind.INVALID, f"count is {count}: ask for at most {MAX_STREAM_KEYS} stream keys"
            )
        first, *more = self.grains.open_stream_keys(request.grain_id, request.session_id, count)
        reply = ticket_pb(self.relay_address(), first)
        reply.more_stream_key_secrets.extend(ticket.secret for ticket in more)
        return reply

    async def StopGrain(self, request: pb.StopGrainRequest, context: Any) -> pb.Grain:
        return self._grain_pb(await self.grains.stop(request.grain_id))

    async def RestartGrain(self, request: pb.RestartGrainRequest, context: Any) -> pb.Grain:
        return self._grain_pb(await self.grains.restart(request.grain_id))

    async def TrashGrain(self, request: pb.TrashGrainRequest, context: Any) -> pb.Grain:
        return self._grain_pb(await self.grains.trash(request.grain_id))

    async def RestoreGrain(self, request: pb.RestoreGrainRequest, context: Any) -> pb.Grain:
        return self._grain_pb(await self.grains.restore(request.grain_id))

    async def DeleteGrain(
        self, request: pb.DeleteGrainRequest, context: Any
    ) -> pb.DeleteGrainResponse:
        await self.grains.delete(request.grain_id, request.skip_trash)
        return pb.DeleteGrainResponse()

    async def GetViewInfo(
        self, request: pb.GetViewInfoRequest, context: Any
    ) -> common_pb2.ViewInfo:
        row = await self.grains.get(request.grain_id)
        if not row.package_id:
            return common_pb2.ViewInfo()
        package = await self.packages.get(row.package_id)
        return view_info_pb(view_info(package.manifest))

    # -- logs ---------------------------------------------------------------------------------

    async def StreamLogs(
        self, request: pb.StreamLogsRequest, context: Any
    ) -> AsyncIterator[pb.LogChunk]:
        await self.grains.get(request.grain_id)
        path = self.grains.log_path(request.grain_id)
        position = 0
        inode = None
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            inode = st.st_ino
            backlog = min(request.backlog_bytes, MAX_BACKLOG, st.st_size)
            position = st.st_size - backlog
            if backlog:
                for chunk in await asyncio.to_thread(read_range, path, position, st.st_size):
                    yield pb.LogChunk(data=chunk, at=stamp(dt.datetime.now(dt.UTC)))
                position = st.st_size
        while request.follow:
            await asyncio.sleep(LOG_POLL_SECONDS)
            if await self.grains.store.get_grain(request.grain_id) is None:
                return  # deleted
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != inode or st.st_size < position:  # rotated: start the new file
                inode, position = st.st_ino, 0
            if st.st_size > position:
                end = min(st.st_size, position + MAX_BACKLOG)
                for chunk in await asyncio.to_thread(read_range, path, position, end):
                    yield pb.LogChunk(data=chunk, at=stamp(dt.datetime.now(dt.UTC)))
                position = end

    # -- export and import (service_snapshots.py does the work) -------------------------------

    async def ExportGrain(
        self, request: pb.ExportGrainRequest, context: Any
    ) -> AsyncIterator[pb.GrainArchivePart]:
        # The grain stays still (frozen or stopped) until this generator ends, however it ends.
        async with self.snaps.hold(request.grain_id) as (row, var):
            parts = service_snapshots.export_parts(self.grains.store, row, grain_pb(row), var)
            async with contextlib.aclosing(parts):
                async for part in parts:
                    yield part

    async def ImportGrain(
        self, request_iterator: AsyncIterator[pb.ImportGrainRequest], context: Any
    ) -> pb.Grain:
        return self._grain_pb(
            await service_snapshots.import_grain(self.grains, self.snaps, request_iterator)
        )


def read_range(path: Any, start: int, end: int) -> list[bytes]:
    out = []
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(MAX_LOG_CHUNK, left))
            if not chunk:
                break
            out.append(chunk)
            left -= len(chunk)
    return out


def register(server: grpc.aio.Server, service: GrainManagerService) -> None:
    grainmgr_pb2_grpc.add_GrainManagerServicer_to_server(service, server)
