"""The asyncpg connection pool of a node."""

from __future__ import annotations

import asyncpg

from sf.config import Config


async def create_pool(config: Config, dsn: str | None = None) -> asyncpg.Pool:
    """A pool on the configured database; JSON codecs and UTC set on every connection."""

    async def init(connection: asyncpg.Connection) -> None:
        await connection.execute("SET TIME ZONE 'UTC'; SET plan_cache_mode = force_generic_plan")

    pool = await asyncpg.create_pool(
        dsn or config.database_url,
        min_size=config.database_pool_min,
        max_size=config.database_pool_max,
        init=init,
        command_timeout=30,
    )
    assert pool is not None
    return pool
