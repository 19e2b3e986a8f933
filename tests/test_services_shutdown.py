"""The services' shutdown closes everything even when one part fails: the PostgreSQL pool,
the Redis connections and the threads really go away, against the real servers."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from sf.config import Config
from sf.ratelimit import Limit
from sf.services.container import start_services

pytestmark = pytest.mark.gen_test(timeout=60)


async def redis_clients_of(observer: Redis, database: int) -> set[int]:
    """The ids of the connections to `database` other than the observer's own."""
    own = await observer.client_id()
    clients = await observer.client_list()
    return {int(client["id"]) for client in clients
            if int(client["db"]) == database and int(client["id"]) != own}


async def eventually(check: Any, timeout: float = 5.0) -> bool:
    """Whether `check()` became true within `timeout` (a closed socket is seen a little later
    by the server)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_failing_cleanup_still_closes_the_pool_redis_and_threads(
        config: Config, caplog: pytest.LogCaptureFixture):
    services = await start_services(config.replace(database_pool_min=2, database_pool_max=2))
    observer = Redis.from_url(config.redis_url)
    database = observer.connection_pool.connection_kwargs.get("db", 0)
    watcher = await asyncpg.connect(config.database_url)
    try:
        # Every part in use: both pool connections, the client, the gate's own connection.
        async with services.db.acquire() as first, services.db.acquire() as second:
            pids = [first.get_server_pid(), second.get_server_pid()]
        await services.redis.ping()
        assert (await services.limiter.hit([Limit("shutdown", "t", 10, 60)])).alive
        assert len(await redis_clients_of(observer, database)) >= 2

        ran: list[str] = []

        def fails(name: str) -> Any:
            def cleanup() -> None:
                ran.append(name)
                raise RuntimeError(f"{name} would not close")
            return cleanup

        services.cleanups.add("a part that fails first", fails("first"))
        services.cleanups.add("a part that fails last", fails("last"))  # runs first

        with pytest.raises(RuntimeError, match="^last would not close$"):
            await services.close()

        assert ran == ["last", "first"]

        async def pool_gone() -> bool:
            return not await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids)

        async def redis_gone() -> bool:
            return not await redis_clients_of(observer, database)

        assert await eventually(pool_gone), "the pool's connections are still open"
        assert await eventually(redis_gone), "a Redis connection is still open"
        with pytest.raises(RuntimeError):  # the hashing threads were shut down
            services.hasher.executor.submit(print)
        assert [record.getMessage() for record in caplog.records
                if record.name == "sf.services" and record.levelname == "ERROR"] == [
            "closing a part that fails last failed", "closing a part that fails first failed"]
    finally:
        await watcher.close()
        await observer.aclose()
        await services.close()  # nothing left to run: a second close does nothing
