"""Small helpers for auth's SQL: rows as dicts, one place to open a transaction.

Owns: nothing but the way queries are run (auth's schema is reached through the pool's
search_path, set by grainhouse_common.db).
Trusts: the pool handed to it.
Never: builds SQL from values: every value goes in as a parameter.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]


async def one(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def many(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def run(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> int:
    cur = await conn.execute(query, params)
    return cur.rowcount
