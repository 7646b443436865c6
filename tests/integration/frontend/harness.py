"""The frontend test harness: an HTTP client for the whole platform, and helpers around it.

The platform itself (`grainhouse up`) is tests/support/stack.py's Stack. Shared by
tests/integration/frontend and tests/e2e (a plain module, not a conftest).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import stack as support
from tests.support.stack import Stack, running_stack

__all__ = ["FRONTEND_ENV", "Stack", "running_stack"]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


# What the frontend and e2e stacks run with on top of the defaults.
FRONTEND_ENV = {
    "GRAINHOUSE_GRAINMGR_IDLE_STOP_SECONDS": "60",
    # A reverse proxy "at" 127.0.0.2 (test_proxy_headers.py); every other client is 127.0.0.1.
    "GRAINHOUSE_FRONTEND_TRUSTED_PROXIES": "127.0.0.2",
}


def make_data_root() -> Path:
    return support.make_data_root("gh-front-")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Client:
    """A tiny HTTP client that keeps cookies per host, like a browser, and never follows
    redirects on its own (tests look at them)."""

    base: str
    cookies: dict[str, dict[str, str]] = field(default_factory=dict)
    token: str | None = None
    # Local address to connect from (any 127.x.y.z works on loopback), and headers sent with
    # every request: how a test plays a reverse proxy.
    source: str | None = None
    always: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, url: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, host: str | None = None,
    ) -> Reply:  # fmt: skip
        full = url if url.startswith("http") else self.base + url
        parts = urllib.parse.urlsplit(full)
        conn = http.client.HTTPConnection(
            "127.0.0.1", parts.port, timeout=120,
            source_address=(self.source, 0) if self.source else None,
        )  # fmt: skip
        hdrs = {**self.always, **(headers or {})}
        hostname = host or parts.netloc
        hdrs.setdefault("Host", hostname)
        jar = self.cookies.get(hostname.split(":")[0], {})
        if jar:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        if self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {self.token}"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target or "/", body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        for value in resp.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            val = rest.split(";", 1)[0]
            store = self.cookies.setdefault(hostname.split(":")[0], {})
            if "max-age=0" in value.lower() or val in ('""', ""):
                store.pop(name, None)
            else:
                store[name] = val
        conn.close()
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)

    def get(self, url: str, **kw: Any) -> Reply:
        return self.request("GET", url, **kw)

    def csrf(self, url: str) -> str:
        page = self.get(url).text
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page[:500]
        return found.group(1)

    def form(self, url: str, fields: dict[str, str], csrf_from: str | None = None) -> Reply:
        data = dict(fields)
        if "csrf" not in data:
            data["csrf"] = self.csrf(csrf_from or url)
        return self.request(
            "POST", url, urllib.parse.urlencode(data).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip

    def api(self, method: str, path: str, doc: Any = None, **headers: str) -> Reply:
        body = None if doc is None else json.dumps(doc).encode()
        hdrs = {"Content-Type": "application/json", **headers} if body else dict(headers)
        return self.request(method, "/api/v1" + path, body, hdrs)


def guest_by_share_link(
    stack: Stack, owner: Client, grain: str
) -> tuple[dict[str, Any], Client, Any, str]:
    """A viewer share link of `grain` opened by a fresh anonymous browser: (the link as the
    REST API made it, the guest's client, the grain page, the page's ui- origin URL)."""
    link = owner.api("POST", f"/grains/{grain}/shares", {"role": "viewer"}).json()
    guest = Client(stack.url)
    page = guest.get(link["url"])
    assert page.status == 200, page.text[:300]
    found = re.search(r'src="(http://ui-[0-9a-f]{32}\.localhost:\d+/)"', page.text)
    assert found, page.text[:300]
    return link, guest, page, found.group(1)


def setup_admin(stack: Stack, email: str = "admin@example.org") -> Client:
    link = stack.cli("admin", "setup-link").strip().splitlines()[-1]
    path = urllib.parse.urlsplit(link).path
    browser = Client(stack.url)
    reply = browser.form(
        path, {"display_name": "Ada Admin", "email": email, "password": "correct horse battery"}
    )
    assert reply.status == 303, reply.text[:500]
    return browser


def make_token(browser: Client, scope: str = "admin") -> str:
    page = browser.form("/account/tokens", {"name": "tests", "scope": scope, "days": "30"},
                        csrf_from="/account")  # fmt: skip
    assert page.status == 200, page.text[:300]
    found = re.search(r'id="new-token">([^<]+)<', page.text)
    assert found, page.text
    return found.group(1).strip()


def build_notes(out: Path) -> Path:
    from grainhouse_package import generate_key, pack_directory
    from grainhouse_package.stack import PythonStack, build_python_stack

    build_python_stack(PythonStack(source_dir=EXAMPLES / "notes"), out / "app")
    pack_directory(out / "app", out / "notes.pkg", generate_key(), level=0)
    return out / "notes.pkg"


def install_package(api: Client, path: Path) -> dict[str, Any]:
    reply = api.request(
        "POST", "/api/v1/apps", path.read_bytes(), {"Content-Type": "application/octet-stream"}
    )
    assert reply.status == 202, reply.text
    task = reply.json()
    deadline = time.monotonic() + 120
    while task["state"] == "running":
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
        task = api.api("GET", f"/tasks/{task['id']}").json()
    assert task["state"] == "succeeded", task
    return dict(task["result"])


def build_probe(out: Path) -> Path:
    """The grains tests' probe app (echoes the headers it receives), packed here."""
    from grainhouse_package import generate_key, pack_directory

    src = Path(__file__).resolve().parents[1] / "grains" / "testapp"
    pack_directory(src, out / "probe.pkg", generate_key(), level=0)
    return out / "probe.pkg"


def sign_up(stack: Stack, admin: Client, name: str, email: str) -> Client:
    """A second account through an admin's invitation, signed in, in its own cookie jar."""
    page = admin.form("/admin/invite", {"email": email}, csrf_from="/admin")
    found = re.search(r'id="invite-url">([^<]+)<', page.text)
    assert found, page.text[:500]
    path = urllib.parse.urlsplit(found.group(1).strip()).path
    user = Client(stack.url)
    reply = user.form(
        path, {"display_name": name, "email": email, "password": "correct horse battery"}
    )
    assert reply.status == 303, reply.text[:500]
    return user
