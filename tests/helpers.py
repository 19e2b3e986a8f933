"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg

# The run slot (SFTEST_SLOT) and its Redis databases; platforms and ports: the harness package.
from harness.slots import MEDIA_REDIS_DB, TEST_REDIS_DB
from harness.slots import SLOT as TEST_SLOT
from sf.db.migrate import drop_database, recreate_database

__all__ = ["MEDIA_REDIS_DB", "TEST_REDIS_DB", "TEST_SLOT", "fetch_value", "go_live",
           "run_private", "set_viewers", "main_and_empty_databases"]


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


def main_and_empty_databases(server_url: str, prefix: str) -> Iterator[dict[str, str]]:
    """For a module fixture: a migrated database for the app ("main") and an empty one (a
    machine being rebuilt, "empty"), dropped afterwards (backup and restore tests)."""
    names = {"main": f"{prefix}_{uuid.uuid4().hex[:10]}",
             "empty": f"{prefix}_empty_{uuid.uuid4().hex[:10]}"}
    urls = {role: run_private(recreate_database(server_url, name,
                                                apply_migrations=role == "main"))
            for role, name in names.items()}
    yield urls
    for name in names.values():
        run_private(drop_database(server_url, name))


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
