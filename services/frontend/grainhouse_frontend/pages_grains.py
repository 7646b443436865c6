"""Web UI: grains (list, search, sort, trash), apps (install, uninstall, new grain), the grain
view with its own origin, sharing.

Owns: the grain pages and the opening of per-session origins for the browser.
Trusts: auth.Authorize before showing or framing a grain; grainmgr for grain data.
Never: frames a grain the viewer may not open; shows a share link's secret twice.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error
from grainhouse_frontend.identity import client_address
from grainhouse_frontend.page_base import (
    CHUNK,
    MAX_PACKAGE_BYTES,
    STATE_NAMES,
    UiBase,
    human_size,
    when,
)
from grainhouse_frontend.web_session import WebUser
from grainhouse_proto import auth_pb2, common_pb2, grainmgr_pb2, grainmgr_pb2_grpc


class GrainPages(UiBase):
    # -- grains -------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        trash = request.query_params.get("view") == "trash"
        shared = request.query_params.get("view") == "shared"
        q = request.query_params.get("q", "").strip()
        sort = request.query_params.get("sort", "recent")
        rows: list[Any] = []
        token = ""
        if shared:
            return await self._shared_page(request, user, q, sort)
        # TODO(perf): grainmgr could search and sort; until then one user's list is read whole.
        for _ in range(20):
            reply = await self.d.grainmgr.ListGrains(
                grainmgr_pb2.ListGrainsRequest(
                    owner_account_id=user.account_id,
                    only_trashed=trash,
                    page=common_pb2.PageRequest(page_size=500, page_token=token),
                ),
                timeout=10,
            )
            rows += list(reply.grains)
            token = reply.page.next_page_token
            if not token:
                break
        if q:
            rows = [g for g in rows if q.lower() in (g.title + " " + g.app_title).lower()]
        keys = {
            "title": (lambda g: g.title.lower(), False),
            "created": (lambda g: (g.created_at.seconds, g.created_at.nanos), True),
            "size": (lambda g: g.size_bytes, True),
        }
        if sort in keys:
            key, rev = keys[sort]
            rows.sort(key=key, reverse=rev)
        grains = [
            {"grain_id": g.grain_id, "title": g.title, "app_title": g.app_title,
             "size": human_size(g.size_bytes), "state": STATE_NAMES.get(g.state, "?"),
             "used": "Last used " + when(g.last_used_at) if g.last_used_at.seconds
             else "Created " + when(g.created_at),
             # The app's own words (Platform.stayAwake): text, escaped like every value here.
             "awake": "; ".join(g.awake_reasons)}
            for g in rows
        ]  # fmt: skip
        return self.render(
            request,
            "grains.html",
            user,
            grains=grains,
            trash=trash,
            q=q,
            sort=sort,
            section="grains",
            title="Trash" if trash else "Grains",
        )

    async def _shared_page(self, request: Request, user: WebUser, q: str, sort: str) -> Response:
        """ "Shared with me": auth knows which grains and the role; grainmgr the rest."""
        found: list[auth_pb2.SharedGrain] = []
        token = ""
        for _ in range(20):
            reply = await self.d.auth.ListSharedGrains(
                auth_pb2.ListSharedGrainsRequest(
                    caller=user.credential(),
                    page=common_pb2.PageRequest(page_size=500, page_token=token),
                ),
                timeout=10,
            )
            found += list(reply.grains)
            token = reply.page.next_page_token
            if not token:
                break
        rows: list[tuple[auth_pb2.SharedGrain, grainmgr_pb2.Grain]] = []
        for s in found:
            try:
                g = await self.d.grainmgr.GetGrain(
                    grainmgr_pb2.GetGrainRequest(grain_id=s.grain_id), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    continue  # deleted since auth answered
                raise
            if g.state == grainmgr_pb2.GRAIN_STATE_TRASHED:
                continue  # the owner put it away; it comes back with a restore
            rows.append((s, g))
        if q:
            rows = [r for r in rows if q.lower() in (r[1].title + " " + r[1].app_title).lower()]
        if sort == "title":
            rows.sort(key=lambda r: r[1].title.lower())
        elif sort == "created":
            rows.sort(key=lambda r: (r[1].created_at.seconds, r[1].created_at.nanos), reverse=True)
        elif sort == "size":
            rows.sort(key=lambda r: r[1].size_bytes, reverse=True)
        grains = [
            {"grain_id": g.grain_id, "title": g.title, "app_title": g.app_title,
             "size": human_size(g.size_bytes), "state": STATE_NAMES.get(g.state, "?"),
             "role": s.role, "owner": s.owner_display_name,
             "used": "Shared " + when(s.shared_at)}
            for s, g in rows
        ]  # fmt: skip
        return self.render(
            request,
            "grains.html",
            user,
            grains=grains,
            trash=False,
            shared=True,
            q=q,
            sort=sort,
            section="grains",
            title="Shared with me",
        )

    async def apps(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        reply = await self.d.grainmgr.ListPackages(
            grainmgr_pb2.ListPackagesRequest(page=common_pb2.PageRequest(page_size=500)),
            timeout=10,
        )
        return self.render(
            request, "apps.html", user, apps=list(reply.packages), section="apps", title="Apps"
        )

    async def app_upload(self, request: Request) -> Response:
        user = await self.d.sessions.user(request)
        if user is None:
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        self.d.sessions.check_csrf(request, user, request.headers.get("x-csrf-token", ""))
        if not user.is_admin:
            return JSONResponse({"detail": "only admins install apps"}, status_code=403)
        try:
            size = int(request.headers.get("content-length", "0"))
        except ValueError:
            size = 0
        if size <= 0 or size > MAX_PACKAGE_BYTES:
            return JSONResponse({"detail": "a package upload needs a size"}, status_code=411)
        try:
            reply = await install_stream(self.d.grainmgr, request, size, user.account_id)
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            return JSONResponse({"detail": err.public_message}, status_code=err.http_status)
        return JSONResponse({"app_id": reply.app_id, "package_id": reply.package_id})

    async def app_uninstall(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        await self.post_form(request, user)
        if not user.is_admin:
            return self.message(request, user, "Not allowed", "Only admins uninstall apps.", 403)
        try:
            await self.d.grainmgr.UninstallPackage(
                grainmgr_pb2.UninstallPackageRequest(
                    package_id=request.path_params["package_id"], acting_account_id=user.account_id
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        return RedirectResponse("/apps?done=uninstalled", status_code=303)

    async def grain_new(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        if not user.can_create_grains:  # auth's decision (a visitor: no invitation)
            return self.message(
                request,
                user,
                "Not allowed",
                "Visitors open what is shared with them but cannot create grains: "
                "ask an admin for an invitation.",
                403,
            )
        try:
            grain = await self.d.grainmgr.CreateGrain(
                grainmgr_pb2.CreateGrainRequest(
                    app_id=request.path_params["app_id"],
                    action_index=int(form.get("action", "0") or 0),
                    title=form.get("title", "").strip()[:200],
                    owner_account_id=user.account_id,
                ),
                timeout=60,
            )
        except (grpc.aio.AioRpcError, ValueError) as exc:
            if isinstance(exc, ValueError):
                exc = GrainhouseError(Kind.INVALID, "bad action")
            return self.fail(request, user, exc)
        return RedirectResponse(f"/grain/{grain.grain_id}", status_code=303)

    async def _authorize(
        self, credential: auth_pb2.Credential, grain_id: str
    ) -> auth_pb2.AuthorizeResponse | None:
        reply = await self.d.auth.Authorize(
            auth_pb2.AuthorizeRequest(credential=credential, grain_id=grain_id), timeout=5
        )
        return reply if reply.allowed else None

    async def open_origin(
        self, grain_id: str, credential: auth_pb2.Credential, address: str = ""
    ) -> str:
        """A new `ui-` origin for this grain session, made and kept by auth (origins.py)."""
        scheme = self.d.public_url.split("://", 1)[0]
        return await self.d.origins.open(self.d.auth, credential, grain_id, address, scheme)

    async def _grain_page(
        self,
        request: Request,
        user: WebUser | None,
        credential: auth_pb2.Credential,
        grain_id: str,
    ) -> Response:
        decision = await self._authorize(credential, grain_id)
        if decision is None:
            return self.message(
                request,
                user,
                "No access",
                "This grain does not exist or is not shared with you.",
                404,
            )
        grain = await self.d.grainmgr.GetGrain(
            grainmgr_pb2.GetGrainRequest(grain_id=grain_id), timeout=10
        )
        if grain.state == grainmgr_pb2.GRAIN_STATE_TRASHED:
            return self.message(request, user, "In the trash", "This grain is in the trash.", 410)
        frame_url = await self.open_origin(grain_id, credential, client_address(request))
        return self.render(
            request,
            "grain.html",
            user,
            grain=grain,
            title=grain.title,
            frame_url=frame_url,
            is_owner=decision.is_owner,
            can_share=user is not None,
        )

    async def grain_view(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        try:
            return await self._grain_page(
                request, user, user.credential(), request.path_params["grain_id"]
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)

    async def shared(self, request: Request) -> Response:
        secret = request.path_params["secret"]
        user = await self.d.sessions.user(request)
        try:
            if user is not None:
                reply = await self.d.auth.RedeemShareLink(
                    auth_pb2.RedeemShareLinkRequest(
                        caller=user.credential(),
                        share_link_secret=secret,
                        client_address=client_address(request),
                    ),
                    timeout=10,
                )
                return RedirectResponse(f"/grain/{reply.grain_id}", status_code=303)
            # An anonymous visitor acts through the link itself, bound to its one grain.
            credential = auth_pb2.Credential(share_link_secret=secret)
            probe = await self.d.auth.Authorize(
                auth_pb2.AuthorizeRequest(
                    credential=credential, grain_id="-", client_address=client_address(request)
                ),
                timeout=5,
            )
            grain_id = probe.principal.grain_id
            if not grain_id:
                raise GrainhouseError(Kind.NOT_FOUND, "this link is revoked or expired")
            return await self._grain_page(request, None, credential, grain_id)
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)

    async def _owned_grain(self, user: WebUser, grain_id: str) -> grainmgr_pb2.Grain:
        grain = cast(
            grainmgr_pb2.Grain,
            await self.d.grainmgr.GetGrain(
                grainmgr_pb2.GetGrainRequest(grain_id=grain_id), timeout=10
            ),
        )
        if grain.owner_account_id != user.account_id:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        return grain

    async def grain_op(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        grain_id, op = request.path_params["grain_id"], request.path_params["op"]
        if op == "rename":
            return await self._rename(request, user, grain_id, form.get("title", ""))
        gm = self.d.grainmgr
        calls: dict[str, tuple[Any, Any, str]] = {
            "trash": (gm.TrashGrain, grainmgr_pb2.TrashGrainRequest, "/?done=trashed"),
            "restore": (gm.RestoreGrain, grainmgr_pb2.RestoreGrainRequest, "/?done=restored"),
            "restart": (gm.RestartGrain, grainmgr_pb2.RestartGrainRequest, f"/grain/{grain_id}"),
            "delete": (
                gm.DeleteGrain,
                grainmgr_pb2.DeleteGrainRequest,
                "/?view=trash&done=deleted",
            ),
        }
        if op not in calls:
            return self.message(request, user, "Not found", "No such action.", 404)
        method, req_type, target = calls[op]
        try:
            await self._owned_grain(user, grain_id)
            await method(req_type(grain_id=grain_id, acting_account_id=user.account_id), timeout=60)
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        return RedirectResponse(target, status_code=303)

    async def _rename(self, request: Request, user: WebUser, grain_id: str, title: str) -> Response:
        """The owner changes the grain's title (the grain view's title form)."""
        title = title.strip()
        try:
            if not 1 <= len(title) <= 200:
                raise GrainhouseError(Kind.INVALID, "A title has 1 to 200 characters.")
            await self._owned_grain(user, grain_id)
            await self.d.grainmgr.UpdateGrain(
                grainmgr_pb2.UpdateGrainRequest(
                    grain_id=grain_id, title=title, acting_account_id=user.account_id
                ),
                timeout=10,
            )
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        return RedirectResponse(f"/grain/{grain_id}", status_code=303)

    async def grain_log(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        try:
            grain = await self._owned_grain(user, request.path_params["grain_id"])
            data = b""
            async for chunk in self.d.grainmgr.StreamLogs(
                grainmgr_pb2.StreamLogsRequest(
                    grain_id=grain.grain_id, backlog_bytes=64 * 1024, follow=False
                ),
                timeout=10,
            ):
                data += chunk.data
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        return self.render(
            request,
            "log.html",
            user,
            grain=grain,
            text=data.decode("utf-8", "replace"),
            title="Log",
        )

    # -- sharing ------------------------------------------------------------------------------

    async def share(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        grain_id = request.path_params["grain_id"]
        new_url = ""
        try:
            if request.method == "POST":
                form = await self.post_form(request, user)
                made = await self.d.auth.CreateShareLink(
                    auth_pb2.CreateShareLinkRequest(
                        caller=user.credential(),
                        grain_id=grain_id,
                        role=form.get("role", ""),
                        label=form.get("label", "")[:100],
                        base_url=self.d.public_url,
                    ),
                    timeout=10,
                )
                new_url = made.url
            if await self._authorize(user.credential(), grain_id) is None:
                raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
            grain = await self.d.grainmgr.GetGrain(
                grainmgr_pb2.GetGrainRequest(grain_id=grain_id), timeout=10
            )
            info = await self.d.grainmgr.GetViewInfo(
                grainmgr_pb2.GetViewInfoRequest(grain_id=grain_id), timeout=10
            )
            access = await self.d.auth.ListAccess(
                auth_pb2.ListAccessRequest(caller=user.credential(), grain_id=grain_id), timeout=10
            )
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        grants = [grant_view(g) for g in access.grants]
        roles = [r for r in info.roles if not r.obsolete]
        return self.render(
            request,
            "share.html",
            user,
            grain=grain,
            roles=roles,
            grants=grants,
            new_url=new_url,
            title="Share",
            section="grains",
        )

    async def share_revoke(self, request: Request) -> Response:
        grain_id, grant_id = request.path_params["grain_id"], request.path_params["grant_id"]
        return await self.form_action(
            request,
            lambda user: self.d.auth.RevokeGrant(
                auth_pb2.RevokeGrantRequest(caller=user.credential(), grant_id=grant_id),
                timeout=10,
            ),
            f"/grain/{grain_id}/share?done=revoked",
        )


def grant_view(g: auth_pb2.Grant) -> dict[str, str]:
    which = g.WhichOneof("grantee")
    if which == "share_link_id":
        who = "Link" + (f": {g.label}" if g.label else "")
    elif which == "grain_api_token_id":
        who = "API token" + (f": {g.label}" if g.label else "")
    else:
        who = g.grantee_display_name or "An account"
    return {"grant_id": g.grant_id, "who": who, "role": g.role, "created": when(g.created_at)}


async def install_stream(
    grainmgr: grainmgr_pb2_grpc.GrainManagerStub, request: Request, size: int, account_id: str
) -> grainmgr_pb2.InstallPackageResponse:
    """Stream a request body into grainmgr.InstallPackage in ≤1 MiB chunks, never whole."""

    async def parts() -> Any:
        yield grainmgr_pb2.InstallPackageRequest(
            metadata=grainmgr_pb2.InstallPackageMetadata(
                size_bytes=size, acting_account_id=account_id
            )
        )
        buf = b""
        async for piece in request.stream():
            buf += piece
            while len(buf) >= CHUNK:
                yield grainmgr_pb2.InstallPackageRequest(chunk=buf[:CHUNK])
                buf = buf[CHUNK:]
        if buf:
            yield grainmgr_pb2.InstallPackageRequest(chunk=buf)

    return cast(
        grainmgr_pb2.InstallPackageResponse,
        await grainmgr.InstallPackage(parts(), timeout=300),
    )
