"""The asyncpg connection pool of a node."""

from __future__ import annotations

import asyncpg

from sf.config import Config

# Prepared statements keep one generic plan (the API's queries are short keyed lookups; custom
# plans cost ~0.6 ms of planning per execution for the stream list).
SESSION_SETTINGS = {"timezone": "UTC", "plan_cache_mode": "force_generic_plan"}


async def create_pool(config: Config, dsn: str | None = None) -> asyncpg.Pool:
    """A pool on the configured database: UTC and generic plans on every connection.

    The settings are session defaults sent when a connection opens, not `SET`s after it: by
    default asyncpg runs `RESET ALL` (plus three more statements) on every release, which
    silently dropped settings made with `SET` after a connection's first use. It does not
    here (`keep_session`): the code holds no session state across a release (advisory locks
    are transaction-scoped, `SET LOCAL` only, no LISTEN or cursors), and the reset query was
    one more round trip on every query (bench/api.py profile). asyncpg still rolls back a
    transaction left open.
    """

    async def keep_session(connection: asyncpg.Connection) -> None:
        return None

    pool = await asyncpg.create_pool(
        dsn or config.database_url,
        min_size=config.database_pool_min,
        max_size=config.database_pool_max,
        server_settings=SESSION_SETTINGS,
        reset=keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool
