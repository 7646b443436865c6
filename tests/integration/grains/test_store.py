"""grainmgr's grain rows on the platform's real PostgreSQL: a live-state write that does not
wait for the disk (`durable=False`) changes the row and leaves the pooled connection as it was;
a start reads the grain and its app's current package in one statement."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from grainhouse_grainmgr import store as store_module
from grainhouse_grainmgr.store import Store

from .conftest import Platform, create

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def grainmgr_db_url(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
    return Path(env["GRAINHOUSE_GRAINMGR_DATABASE_URL_FILE"]).read_text().strip()


def test_a_write_without_the_disk_wait_changes_only_its_own_transaction(
    platform: Platform,
) -> None:
    grain = create(platform, platform.probe)
    url = grainmgr_db_url(platform.grainmgr_pid)

    async def run() -> tuple[str, str, str, str]:
        # One connection: the second write and the SHOW run on the one the first write used.
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=1, open=False, kwargs={"options": "-c search_path=grainmgr"}
        )
        await pool.open(wait=True)
        try:
            store = Store(pool)
            await store.update_grain(grain.grain_id, durable=False, last_error="quick")
            async with pool.connection() as conn:
                cur = await conn.execute("SHOW synchronous_commit")
                after_quick = (await cur.fetchone() or ("",))[0]
            row = await store.get_grain(grain.grain_id)
            assert row is not None
            quick = row.last_error
            await store.update_grain(grain.grain_id, last_error="")
            row = await store.get_grain(grain.grain_id)
            assert row is not None
            async with pool.connection() as conn:
                cur = await conn.execute("SHOW synchronous_commit")
                after_durable = (await cur.fetchone() or ("",))[0]
            return quick, after_quick, row.last_error, after_durable
        finally:
            await pool.close()

    quick, after_quick, durable, after_durable = asyncio.run(run())
    assert quick == "quick"  # the row changed
    assert after_quick == "on"  # SET LOCAL ended with its transaction: the pool is unchanged
    assert durable == ""
    assert after_durable == "on"


def test_a_start_reads_the_grain_and_its_app_s_current_package_in_one_statement(
    platform: Platform,
) -> None:
    grain = create(platform, platform.probe)
    url = grainmgr_db_url(platform.grainmgr_pid)

    async def run() -> tuple[Any, Any, bool]:
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=1, open=False, kwargs={"options": "-c search_path=grainmgr"}
        )
        await pool.open(wait=True)
        try:
            store = Store(pool)
            found = await store.grain_to_start(grain.grain_id)
            missing = await store.grain_to_start("no-such-grain")
            async with pool.connection() as conn:
                transactional = not conn.autocommit  # handed back as the pool gave it
            return found, missing, transactional
        finally:
            await pool.close()

    found, missing, transactional = asyncio.run(run())
    assert missing is None
    assert found.row.grain_id == grain.grain_id
    assert found.row.state == "stopped"
    assert found.current_package_id == grain.package_id != ""
    assert found.current_version == found.row.app_version > 0
    assert transactional


def test_the_lazy_commit_rides_in_the_write_itself(platform: Platform) -> None:
    """The write without the disk wait is one statement in autocommit mode: the setting must
    come with the statement (a SET LOCAL outside a transaction block does nothing)."""
    grain = create(platform, platform.probe)
    url = grainmgr_db_url(platform.grainmgr_pid)

    async def run() -> tuple[str, str]:
        async with await AsyncConnection.connect(url, options="-c search_path=grainmgr") as conn:
            # In a transaction block, what the statement set can still be seen afterwards.
            await conn.execute(
                f"UPDATE grains SET last_error = 'x'{store_module._LAZY_COMMIT}"
                " WHERE grain_id = %s",
                (grain.grain_id,),
            )
            cur = await conn.execute("SHOW synchronous_commit")
            inside = (await cur.fetchone() or ("",))[0]
            await conn.rollback()
            cur = await conn.execute("SHOW synchronous_commit")
            after = (await cur.fetchone() or ("",))[0]
            return inside, after

    inside, after = asyncio.run(run())
    assert inside == "off"
    assert after == "on"
