"""Example Grainhouse app: a notebook that shows who edited what, with viewer/editor roles.

Owns: the notes database (SQLite) under the grain's storage, /var by default.
Trusts: the X-Sandstorm-* headers, which the platform sets on every request and strips from
anything a browser sent; nothing else a client says about who it is.
Never: stores data outside its data directory; lets a request without the "edit" permission
change anything.

Runs on the grain's /usr/bin/python3 with /opt/app/site-packages on PYTHONPATH (see the
manifest). NOTES_DATA_DIR exists only so tests can run the app outside a grain.
"""

from __future__ import annotations

import html
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

DATA_DIR = Path(os.environ.get("NOTES_DATA_DIR", "/var"))
MAX_TITLE = 200
MAX_BODY = 100_000


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(DATA_DIR / "notes.sqlite3")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
        " body TEXT NOT NULL, author_id TEXT NOT NULL, author_name TEXT NOT NULL,"
        " updated REAL NOT NULL)"
    )
    return conn


class Who:
    """The identity the platform vouches for on this request."""

    def __init__(self, request: Request) -> None:
        h = request.headers
        self.user_id = h.get("x-sandstorm-user-id", "")
        # Sandstorm percent-encodes the display name so any UTF-8 survives a header.
        self.name = unquote(h.get("x-sandstorm-username", "")) or "Anonymous"
        raw = h.get("x-sandstorm-permissions", "")
        self.permissions = {p.strip() for p in raw.split(",") if p.strip()}

    def as_dict(self) -> dict[str, object]:
        return {
            "user_id": self.user_id or None,
            "name": self.name,
            "permissions": sorted(self.permissions),
        }


def _note(row: tuple[object, ...]) -> dict[str, object]:
    keys = ("id", "title", "body", "author_id", "author_name", "updated")
    return dict(zip(keys, row, strict=True))


def _forbidden(need: str) -> Response:
    return JSONResponse({"error": f"the '{need}' permission is required"}, status_code=403)


async def index(request: Request) -> Response:
    who = Who(request)
    if "view" not in who.permissions:
        return HTMLResponse("<p>You may not read this notebook.</p>", status_code=403)
    with _db() as conn:
        rows = conn.execute("SELECT * FROM notes ORDER BY id").fetchall()
    items = "".join(
        f"<li><b>{html.escape(str(n['title']))}</b>: {html.escape(str(n['body']))}"
        f" <i>(last edited by {html.escape(str(n['author_name']))})</i></li>"
        for n in map(_note, rows)
    )
    role = "editor" if "edit" in who.permissions else "viewer"
    page = (
        f"<!doctype html><title>Notes</title><h1>Notes</h1>"
        f"<p>Signed in as {html.escape(who.name)} ({role})</p><ul>{items}</ul>"
    )
    return HTMLResponse(page)


async def whoami(request: Request) -> Response:
    return JSONResponse(Who(request).as_dict())


async def list_notes(request: Request) -> Response:
    if "view" not in Who(request).permissions:
        return _forbidden("view")
    with _db() as conn:
        rows = conn.execute("SELECT * FROM notes ORDER BY id").fetchall()
    return JSONResponse([_note(r) for r in rows])


async def _read_note(request: Request) -> tuple[str, str] | Response:
    try:
        doc = await request.json()
        title, body = doc["title"], doc["body"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "expected JSON {title, body}"}, status_code=400)
    if not isinstance(title, str) or not isinstance(body, str):
        return JSONResponse({"error": "title and body must be strings"}, status_code=400)
    if len(title) > MAX_TITLE or len(body) > MAX_BODY:
        return JSONResponse({"error": "note too long"}, status_code=413)
    return title, body


async def create_note(request: Request) -> Response:
    who = Who(request)
    if "edit" not in who.permissions:
        return _forbidden("edit")
    got = await _read_note(request)
    if isinstance(got, Response):
        return got
    with _db() as conn:
        cur = conn.execute(
            "INSERT INTO notes (title, body, author_id, author_name, updated)"
            " VALUES (?, ?, ?, ?, ?)",
            (*got, who.user_id, who.name, time.time()),
        )
        row = conn.execute("SELECT * FROM notes WHERE id = ?", (cur.lastrowid,)).fetchone()
    return JSONResponse(_note(row), status_code=201)


async def update_note(request: Request) -> Response:
    who = Who(request)
    if "edit" not in who.permissions:
        return _forbidden("edit")
    got = await _read_note(request)
    if isinstance(got, Response):
        return got
    note_id = request.path_params["note_id"]
    with _db() as conn:
        cur = conn.execute(
            "UPDATE notes SET title = ?, body = ?, author_id = ?, author_name = ?, updated = ?"
            " WHERE id = ?",
            (*got, who.user_id, who.name, time.time(), note_id),
        )
        if cur.rowcount == 0:
            return JSONResponse({"error": "no such note"}, status_code=404)
        row = conn.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
    return JSONResponse(_note(row))


app = Starlette(
    routes=[
        Route("/", index),
        Route("/api/whoami", whoami),
        Route("/api/notes", list_notes, methods=["GET"]),
        Route("/api/notes", create_note, methods=["POST"]),
        Route("/api/notes/{note_id:int}", update_note, methods=["PUT"]),
    ]
)
