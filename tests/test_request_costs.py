"""A regression guard for the API edge's cost that cannot flake on a noisy machine: the Redis
round trips and commands and the SQL statements each hot route spends, counted at the client
libraries (real PostgreSQL and Redis underneath). A change that adds one fails here; lowering
one means lowering its budget too (bench/api.py measures the time)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
from redis.asyncio.client import Pipeline, Redis

from sf import redis_pipeline

# route → (Redis round trips, Redis commands, SQL statements) of one warm request.
# One script (sf/ratelimit.py's gate) checks the session, counts the rate limits and reads the
# cache entries the answer comes from.
BUDGETS = {
    "profile": (1, 1, 0),             # the gate, with the cached profile (own id, own key)
    "public_user": (1, 1, 0),         # the gate, with the cached answer
    "streams": (1, 1, 0),             # the gate, with generation + cached page
    "streams_filtered": (1, 1, 0),
    "category_streams": (1, 1, 0),    # the category's existence is checked when computing
    "streams_logged_in": (1, 1, 0),   # the gate, with "sees public streams only" (cached) + page
    "streams_invited": (1, 1, 1),     # the gate says "may see private streams": their own page
    "categories": (1, 1, 0),
}


class Costs:
    """Counts what requests send to Redis and PostgreSQL while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        costs = self
        original_command = Redis.execute_command
        original_pipeline = Pipeline.execute
        original_execute = asyncpg.Connection._execute
        original_simple = asyncpg.Connection.execute
        original_call = redis_pipeline.PipelinedConnection.call  # the gate's own connection

        async def command(self: Redis, *args: Any, **options: Any) -> Any:
            costs.counts["redis_round_trips"] += 1
            costs.counts["redis_commands"] += 1
            return await original_command(self, *args, **options)

        async def pipeline(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
            if self.command_stack:
                costs.counts["redis_round_trips"] += 1
                costs.counts["redis_commands"] += len(self.command_stack)
            return await original_pipeline(self, *args, **kwargs)

        def call(self: redis_pipeline.PipelinedConnection, command: bytes) -> Any:
            costs.counts["redis_round_trips"] += 1
            costs.counts["redis_commands"] += 1
            return original_call(self, command)

        async def execute(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
            costs.counts["sql"] += 1
            return await original_execute(self, *args, **kwargs)

        async def simple(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if not args:  # with arguments it goes through _execute, counted there
                costs.counts["sql"] += 1
            return await original_simple(self, query, *args, **kwargs)

        monkeypatch.setattr(Redis, "execute_command", command)
        monkeypatch.setattr(Pipeline, "execute", pipeline)
        monkeypatch.setattr(redis_pipeline.PipelinedConnection, "call", call)
        monkeypatch.setattr(asyncpg.Connection, "_execute", execute)
        monkeypatch.setattr(asyncpg.Connection, "execute", simple)

    def take(self) -> tuple[int, int, int]:
        figures = (self.counts["redis_round_trips"], self.counts["redis_commands"],
                   self.counts["sql"])
        self.counts.clear()
        return figures


@pytest.mark.gen_test(timeout=60)
async def test_hot_routes_stay_within_their_round_trip_budgets(api, services, monkeypatch):
    owner = await api.register("coststreamer")
    viewer = await api.register("costviewer")
    created = await api.post("/api/streams", {"title": "budget", "category_id": 1},
                             token=owner["access_token"])
    assert created.status == 201
    stream_id = created.json["id"]
    await services.db.execute("UPDATE streams SET is_live = true, started_at = now() WHERE id = $1",
                              stream_id)
    owner_private = await api.register("costowner")
    invited = await api.register("costinvited")
    assert (await api.put("/api/stream/allowed-viewers/costinvited",
                          token=owner_private["access_token"])).status in (200, 201, 204)
    routes = {
        "profile": ("/api/users/profile", viewer["access_token"]),
        "public_user": ("/api/users/coststreamer", None),
        "streams": ("/api/streams", None),
        "streams_filtered": ("/api/streams?category_id=1", None),
        "category_streams": ("/api/categories/1/streams", None),
        "streams_logged_in": ("/api/streams?category_id=1", viewer["access_token"]),
        "categories": ("/api/categories", None),
        "streams_invited": ("/api/streams?category_id=1", invited["access_token"]),
    }
    costs = Costs(monkeypatch)
    spent = {}
    for name, (path, token) in routes.items():
        first = await api.get(path, token=token)  # fills the caches
        assert first.status == 200, (name, first)
        costs.take()
        again = await api.get(path, token=token)
        assert again.status == 200 and again.json == first.json
        spent[name] = costs.take()
    if name == "streams":
        assert any(s["id"] == stream_id for s in first.json["data"])
    over = {name: (spent[name], BUDGETS[name]) for name in routes
            if any(used > budget for used, budget in zip(spent[name], BUDGETS[name], strict=True))}
    assert not over, f"(round trips, commands, SQL) spent vs budget: {over}; all: {spent}"
    # The guard can fail: it sees what a request spends.
    assert all(sum(figures) > 0 for figures in spent.values()), spent
