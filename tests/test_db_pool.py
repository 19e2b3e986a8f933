"""The node's asyncpg pool (sf/db/pool.py): its session settings hold for every use of a
connection, and releasing a connection leaves nothing of one request to the next."""

from __future__ import annotations

import pytest

from sf.db.pool import SESSION_SETTINGS, create_pool


@pytest.mark.gen_test(timeout=30)
async def test_session_settings_survive_every_release(base_config):
    pool = await create_pool(base_config.replace(database_pool_min=1, database_pool_max=1))
    try:
        for _ in range(3):  # the old pool lost them at the first release (asyncpg's RESET ALL)
            async with pool.acquire() as connection:
                assert await connection.fetchval("SHOW plan_cache_mode") == \
                    SESSION_SETTINGS["plan_cache_mode"]
                assert await connection.fetchval("SHOW timezone") == "UTC"
                assert (await connection.fetchval("SELECT now()")).utcoffset().total_seconds() == 0
    finally:
        await pool.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_transaction_left_open_is_rolled_back_on_release(base_config):
    pool = await create_pool(base_config.replace(database_pool_min=1, database_pool_max=1))
    try:
        async with pool.acquire() as connection:
            await connection.execute("CREATE TEMP TABLE IF NOT EXISTS leftover (x int)")
            await connection.execute("BEGIN")
            await connection.execute("INSERT INTO leftover VALUES (1)")
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()
            assert await connection.fetchval("SELECT count(*) FROM leftover") == 0
    finally:
        await pool.close()
