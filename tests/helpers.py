"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

# SFTEST_SLOT (0-4) lets several suites run side by side on one machine: each slot has its
# own Redis databases and port range (PostgreSQL databases are per session anyway). Redis has
# databases 0-15; 8 is the benchmarks'.
TEST_SLOT = int(os.environ.get("SFTEST_SLOT", "0"))
TEST_REDIS_DB = (9, 11, 13, 5, 2)[TEST_SLOT]
MEDIA_REDIS_DB = TEST_REDIS_DB + 1
TEST_PORT_OFFSET = 1000 * TEST_SLOT


def run_private(coroutine: Any) -> Any:
    """Run a coroutine on a loop of its own, leaving the current event loop alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def fetch_value(database_url: str, statement: str, *args: Any) -> Any:
    """One value from PostgreSQL, on a connection (and loop) of its own."""
    async def run() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetchval(statement, *args)
        finally:
            await connection.close()

    return run_private(run())


async def go_live(api: Any, services: Any, tokens: dict[str, Any], **settings: Any) -> int:
    """Publish as this user (what nginx-rtmp's on_publish does) and return the stream id."""
    if settings:
        await api.put("/api/stream/settings", settings, token=tokens["access_token"])
    key = (await api.get("/api/stream/key", token=tokens["access_token"])).json["stream_key"]
    return (await services.publishing.authorize_publish(key)).id


async def set_viewers(services: Any, stream_id: int, viewers: int) -> None:
    await services.db.execute("UPDATE streams SET viewers_count = $2 WHERE id = $1",
                              stream_id, viewers)
    await services.cache.bump("streams")
    await services.cache.bump("categories")
