"""Follows: idempotent follow/unfollow, lists, counters consistent under concurrency."""

from __future__ import annotations

import asyncio
import random

import pytest

pytestmark = pytest.mark.gen_test(timeout=90)


async def test_follow_is_idempotent_and_counted(api):
    await api.register("star")
    fan = await api.register("fan")
    for _ in range(3):
        assert (await api.post("/api/users/star/follow", token=fan["access_token"])).status == 204
    assert (await api.get("/api/users/star")).json["followers_count"] == 1
    for _ in range(2):
        assert (await api.delete("/api/users/star/follow", token=fan["access_token"])).status == 204
    assert (await api.get("/api/users/star")).json["followers_count"] == 0


async def test_follow_rules(api):
    me = await api.register("myself")
    own = await api.post("/api/users/myself/follow", token=me["access_token"])
    assert own.status == 422 and own.json["error"]["code"] == "validation_error"
    assert (await api.post("/api/users/ghost/follow", token=me["access_token"])).status == 404
    assert (await api.post("/api/users/myself/follow")).status == 401


async def test_followers_and_following_lists_paginate(api):
    await api.register("star")
    fans = [await api.register(f"fan{i}") for i in range(5)]
    for fan in fans:
        await api.post("/api/users/star/follow", token=fan["access_token"])
    await api.post("/api/users/fan1/follow", token=fans[0]["access_token"])
    seen, cursor = [], None
    while True:
        body = (await api.get("/api/users/star/followers?limit=2"
                              + (f"&cursor={cursor}" if cursor else ""))).json
        seen += [u["username"] for u in body["data"]]
        cursor = body["pagination"]["next_cursor"]
        if not cursor:
            break
    assert seen == ["fan4", "fan3", "fan2", "fan1", "fan0"]  # newest first
    following = (await api.get("/api/users/fan0/following")).json["data"]
    assert [u["username"] for u in following] == ["fan1", "star"]
    assert set(following[0]) == {"id", "username", "avatar", "bio", "followers_count",
                                 "created_at", "is_live"}
    assert (await api.get("/api/users/ghost/followers")).status == 404
    assert (await api.get("/api/users/star/followers?limit=1000")).status == 422


async def test_concurrent_follow_unfollow_keeps_the_count_equal_to_the_rows(api, services):
    await api.register("target")
    fans = [await api.register(f"crowd{i}") for i in range(10)]
    actions = [(random.choice(fans), random.choice(("POST", "DELETE"))) for _ in range(50)]
    responses = await asyncio.gather(*[
        api.request(method, "/api/users/target/follow", token=fan["access_token"])
        for fan, method in actions])
    assert all(r.status == 204 for r in responses)
    rows = await services.db.fetchval(
        "SELECT count(*) FROM follows f JOIN users u ON u.id = f.following_id"
        " WHERE u.username = 'target'")
    counter = await services.db.fetchval("SELECT followers_count FROM users WHERE username = 'target'")
    assert counter == rows
    assert (await api.get("/api/users/target")).json["followers_count"] == rows
