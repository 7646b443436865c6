"""The web UI: server-rendered pages of the platform origin (jinja2, plain forms, no build step).

Owns: the page route table (the pages themselves live in pages_signin, pages_grains and
pages_account; what they share in page_base).
Trusts: `Sessions` for who is signed in; auth for every decision; grainmgr for grain data.
Never: accepts a form without its CSRF token; renders untrusted text unescaped.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from grainhouse_frontend.page_base import HERE, UiDeps, safe_next
from grainhouse_frontend.pages_account import AccountPages
from grainhouse_frontend.pages_backups import BackupPages
from grainhouse_frontend.pages_grains import GrainPages, grant_view, install_stream
from grainhouse_frontend.pages_signin import SignInPages

__all__ = ["Ui", "UiDeps", "grant_view", "install_stream", "safe_next"]


class Ui(SignInPages, GrainPages, BackupPages, AccountPages):
    # -- routes ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        r = [
            Route("/", self.home, methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/login/totp", self.login_totp, methods=["POST"]),
            Route("/login/email", self.login_email, methods=["GET", "POST"]),
            Route("/login/oidc/{provider}", self.oidc_start, methods=["GET"]),
            Route("/login/oidc/{provider}/callback", self.oidc_finish, methods=["GET"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/setup/{secret}", self.setup, methods=["GET", "POST"]),
            Route("/invite/{secret}", self.invite, methods=["GET", "POST"]),
            Route("/apps", self.apps, methods=["GET"]),
            Route("/apps/upload", self.app_upload, methods=["POST"]),
            Route("/apps/{package_id}/uninstall", self.app_uninstall, methods=["POST"]),
            Route("/apps/{app_id}/new", self.grain_new, methods=["POST"]),
            Route("/grain/{grain_id}", self.grain_view, methods=["GET"]),
            Route("/grain/{grain_id}/share", self.share, methods=["GET", "POST"]),
            Route("/grain/{grain_id}/share/{grant_id}/revoke", self.share_revoke, methods=["POST"]),
            Route("/grain/{grain_id}/log", self.grain_log, methods=["GET"]),
            Route("/grain/{grain_id}/backup", self.grain_backup, methods=["GET", "POST"]),
            Route("/backups", self.backups, methods=["GET"]),
            Route("/backups/restore", self.backup_restore, methods=["POST"]),
            Route("/backups/schedules", self.schedule_create, methods=["POST"]),
            Route(
                "/backups/schedules/{schedule_id}/delete", self.schedule_delete, methods=["POST"]
            ),
            Route("/backups/{backup_id}/download", self.backup_download, methods=["GET"]),
            Route("/backups/{backup_id}/delete", self.backup_delete, methods=["POST"]),
            Route("/grain/{grain_id}/{op}", self.grain_op, methods=["POST"]),
            Route("/shared/{secret}", self.shared, methods=["GET"]),
            Route("/account", self.account, methods=["GET"]),
            Route("/account/totp/{op}", self.totp, methods=["POST"]),
            Route("/account/{op}", self.account_op, methods=["POST"]),
            Route("/account/tokens/{token_id}/revoke", self.token_revoke, methods=["POST"]),
            Route("/admin", self.admin, methods=["GET"]),
            Route("/admin/invite", self.admin_invite, methods=["POST"]),
            Route("/admin/users/{account_id}/{op}", self.admin_user, methods=["POST"]),
            Route(
                "/admin/invitations/{invitation_id}/revoke",
                self.admin_invitation_revoke,
                methods=["POST"],
            ),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return r
