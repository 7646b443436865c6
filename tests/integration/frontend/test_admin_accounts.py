"""Admin work on the real stack: disable/enable accounts, invitations; "shared with me"; rename.

Everything goes through the frontend (REST with tokens, the web UI with cookies and CSRF forms)
to the real auth and grainmgr services.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any

import pytest

from .harness import Client, Reply, Stack, make_token, sign_up

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]
PASSWORD = "correct horse battery"


def account_id(api: Client) -> str:
    return str(api.api("GET", "/me").json()["account_id"])


def until(check: Any, limit: float = 1.0) -> bool:
    """True as soon as `check()` holds; False if it still does not after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def patch_user(api: Client, uid: str, doc: dict[str, Any]) -> Reply:
    etag = api.api("GET", f"/admin/users/{uid}").headers["etag"]
    return api.api("PATCH", f"/admin/users/{uid}", doc, **{"If-Match": etag})


def test_disabling_revokes_session_and_token_at_once_and_enabling_allows_login(
    stack: Stack, admin: Client, admin_api: Client
) -> None:
    user = sign_up(stack, admin, "Dora Disabled", "dora@example.org")
    api = Client(stack.url, token=make_token(user, "write"))
    uid = account_id(api)
    assert user.get("/account").status == 200

    # A non-admin may not; a stale If-Match is refused; then the admin disables.
    assert api.api("PATCH", f"/admin/users/{uid}", {"disabled": True}).status == 403
    stale = admin_api.api("PATCH", f"/admin/users/{uid}", {"disabled": True}, **{"If-Match": '"x"'})
    assert stale.status == 412
    done = patch_user(admin_api, uid, {"disabled": True})
    assert done.status == 200 and done.json()["disabled"] is True, done.text
    assert done.headers["etag"] == admin_api.api("GET", f"/admin/users/{uid}").headers["etag"]

    # Both credentials stop working within a second (the revocation event drops cached answers).
    assert until(lambda: api.api("GET", "/me").status == 401)
    assert until(lambda: user.get("/account").status == 303)
    refused = Client(stack.url).form("/login", {"email": "dora@example.org", "password": PASSWORD})
    assert refused.status == 401

    # Enabled again: a fresh login works; the revoked token stays revoked.
    back = patch_user(admin_api, uid, {"disabled": False})
    assert back.status == 200 and back.json()["disabled"] is False
    again = Client(stack.url)
    assert again.form("/login", {"email": "dora@example.org", "password": PASSWORD}).status == 303
    assert again.get("/account").status == 200
    assert api.api("GET", "/me").status == 401


def test_rest_makes_a_user_a_visitor_and_promotes_them_back(
    stack: Stack, admin: Client, admin_api: Client
) -> None:
    user = sign_up(stack, admin, "Vera Visitor", "vera@example.org")
    api = Client(stack.url, token=make_token(user, "write"))
    uid = account_id(api)
    assert api.api("GET", "/me").json()["can_create_grains"] is True

    assert api.api("PATCH", f"/admin/users/{uid}", {"visitor": True}).status == 403
    made = patch_user(admin_api, uid, {"visitor": True})
    assert made.status == 200 and made.json()["visitor"] is True, made.text
    assert until(lambda: api.api("GET", "/me").json()["can_create_grains"] is False, 5.0)
    refused = api.api("POST", "/grains", {"app_id": "x" * 52, "title": "Nope"})
    assert refused.status == 403, refused.text

    back = patch_user(admin_api, uid, {"visitor": False})
    assert back.status == 200 and back.json()["visitor"] is False
    assert until(lambda: api.api("GET", "/me").json()["can_create_grains"] is True, 5.0)
    # An admin cannot be a visitor.
    me = account_id(admin_api)
    assert patch_user(admin_api, me, {"visitor": True}).status == 409


def test_an_admin_cannot_disable_themselves_and_unknown_accounts_are_404(
    admin_api: Client,
) -> None:
    me = account_id(admin_api)
    own = patch_user(admin_api, me, {"disabled": True})
    assert own.status == 409 and own.headers["content-type"] == "application/problem+json"
    assert admin_api.api("GET", f"/admin/users/{me}").json()["disabled"] is False
    assert admin_api.api("PATCH", "/admin/users/acc_nobody", {"disabled": True}).status == 404


def test_admin_page_disables_and_enables_with_csrf_forms(
    stack: Stack, admin: Client, admin_api: Client
) -> None:
    user = sign_up(stack, admin, "Uma Ui", "uma@example.org")
    found = admin_api.api("GET", "/admin/users?q=uma%40example.org").json()["items"]
    uid = found[0]["id"]
    page = admin.get("/admin")
    assert f'action="/admin/users/{uid}/disable"' in page.text
    # The admin's own row has no button.
    assert f'action="/admin/users/{account_id(admin_api)}/disable"' not in page.text
    forged = admin.request(
        "POST", f"/admin/users/{uid}/disable", b"csrf=nope",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert forged.status == 403
    assert user.get("/").status == 200

    done = admin.form(f"/admin/users/{uid}/disable", {}, csrf_from="/admin")
    assert done.status == 200 and "disabled" in done.text
    assert f'action="/admin/users/{uid}/enable"' in done.text
    assert until(lambda: user.get("/").status == 303)

    # A non-admin's form post is refused by auth.
    other = sign_up(stack, admin, "Olaf Other", "olaf@example.org")
    denied = other.form(f"/admin/users/{uid}/enable", {}, csrf_from="/account")
    assert denied.status == 403

    back = admin.form(f"/admin/users/{uid}/enable", {}, csrf_from="/admin")
    assert back.status == 200 and f'action="/admin/users/{uid}/disable"' in back.text
    fresh = Client(stack.url)
    assert fresh.form("/login", {"email": "uma@example.org", "password": PASSWORD}).status == 303


def test_invitations_are_listed_and_revoked(stack: Stack, admin: Client, admin_api: Client) -> None:
    made = admin_api.api("POST", "/admin/invitations", {"email": "ivy@example.org"})
    assert made.status == 201, made.text
    inv = made.json()
    listed = admin_api.api("GET", "/admin/invitations").json()["items"]
    mine = [i for i in listed if i["id"] == inv["id"]]
    assert mine and mine[0]["state"] == "open" and mine[0]["email"] == "ivy@example.org"
    assert "url" not in mine[0] and "secret" not in str(mine[0])

    page = admin.get("/admin")
    assert f'data-invitation="{inv["id"]}"' in page.text and "ivy@example.org" in page.text
    gone = admin.form(f"/admin/invitations/{inv['id']}/revoke", {}, csrf_from="/admin")
    assert gone.status == 303
    assert inv["id"] not in str(admin_api.api("GET", "/admin/invitations").json())
    assert f'data-invitation="{inv["id"]}"' not in admin.get("/admin").text

    # The revoked link no longer makes an account.
    path = urllib.parse.urlsplit(inv["url"]).path
    refused = Client(stack.url).form(
        path, {"display_name": "Ivy", "email": "ivy@example.org", "password": PASSWORD}
    )
    assert refused.status == 400 and "used or expired" in refused.text

    # A used invitation shows as used with all=true; REST revocation is idempotent.
    sign_up(stack, admin, "Uli Used", "uli@example.org")
    everything = admin_api.api("GET", "/admin/invitations?all=true").json()["items"]
    assert any(i["email"] == "uli@example.org" and i["state"] == "used" for i in everything)
    other = admin_api.api("POST", "/admin/invitations", {}).json()
    assert admin_api.api("DELETE", f"/admin/invitations/{other['id']}").status == 204
    assert admin_api.api("DELETE", f"/admin/invitations/{other['id']}").status == 204
    assert admin_api.api("DELETE", "/admin/invitations/tkt_nobody").status == 404

    user = Client(stack.url, token=make_token(sign_up(stack, admin, "Nia", "nia@example.org"),
                                              "write"))  # fmt: skip
    assert user.api("GET", "/admin/invitations").status == 403


def test_shared_with_me_lists_a_redeemed_link_until_it_is_revoked(
    stack: Stack, admin: Client, probe_app: dict[str, Any]
) -> None:
    owner = sign_up(stack, admin, "Sam Sharer", "sam@example.org")
    owner_api = Client(stack.url, token=make_token(owner, "write"))
    grain = owner_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Shared S"})
    gid = grain.json()["id"]
    link = owner_api.api("POST", f"/grains/{gid}/shares", {"role": "viewer"}).json()
    friend = sign_up(stack, admin, "Fay Friend", "fay@example.org")
    friend_api = Client(stack.url, token=make_token(friend, "read"))

    def shared_ids() -> list[str]:
        reply = friend_api.api("GET", "/grains?scope=shared")
        assert reply.status == 200, reply.text
        return [g["id"] for g in reply.json()["items"]]

    assert gid not in shared_ids()
    assert friend.get(link["url"]).status == 303  # redeemed while signed in
    items = friend_api.api("GET", "/grains?scope=shared").json()["items"]
    mine = [g for g in items if g["id"] == gid]
    assert mine and mine[0]["role"] == "viewer" and mine[0]["is_owner"] is False
    assert mine[0]["title"] == "Shared S" and mine[0]["owner_display_name"] == "Sam Sharer"
    assert gid not in [g["id"] for g in friend_api.api("GET", "/grains").json()["items"]]
    assert gid not in [
        g["id"] for g in owner_api.api("GET", "/grains?scope=shared").json()["items"]
    ]
    page = friend.get("/?view=shared")
    assert page.status == 200 and f'href="/grain/{gid}"' in page.text and "viewer" in page.text
    assert friend_api.api("GET", "/grains?scope=everything").status == 400

    assert owner_api.api("DELETE", f"/grants/{link['grant']['id']}").status == 200
    assert gid not in shared_ids()
    assert f'href="/grain/{gid}"' not in friend.get("/?view=shared").text


def test_the_owner_renames_a_grain_from_its_page(
    stack: Stack, admin: Client, probe_app: dict[str, Any]
) -> None:
    owner = sign_up(stack, admin, "Rita Rename", "rita@example.org")
    owner_api = Client(stack.url, token=make_token(owner, "write"))
    gid = owner_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Old"}).json()[
        "id"
    ]
    page = owner.get(f"/grain/{gid}")
    assert f'action="/grain/{gid}/rename"' in page.text
    done = owner.form(f"/grain/{gid}/rename", {"title": "  New title  "}, csrf_from=f"/grain/{gid}")
    assert done.status == 303 and done.headers["location"] == f"/grain/{gid}"
    assert owner_api.api("GET", f"/grains/{gid}").json()["title"] == "New title"
    assert re.search(r'value="New title"', owner.get(f"/grain/{gid}").text)
    empty = owner.form(f"/grain/{gid}/rename", {"title": "   "}, csrf_from=f"/grain/{gid}")
    assert empty.status == 400

    # Someone else (even with a share) gets no title form and cannot rename.
    link = owner_api.api("POST", f"/grains/{gid}/shares", {"role": "editor"}).json()["url"]
    other = sign_up(stack, admin, "Eli Editor", "eli@example.org")
    assert other.get(link).status == 303
    assert f'action="/grain/{gid}/rename"' not in other.get(f"/grain/{gid}").text
    refused = other.form(f"/grain/{gid}/rename", {"title": "Mine"}, csrf_from="/account")
    assert refused.status == 404
    assert owner_api.api("GET", f"/grains/{gid}").json()["title"] == "New title"
