"""grainmgr's grain rows on the platform's real PostgreSQL: a live-state write that does not
wait for the disk (`durable=False`) changes the row and leaves the pooled connection as it was."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

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
