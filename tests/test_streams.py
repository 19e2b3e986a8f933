"""Streams: create, get, update, end, lists with filters/sorts/pagination, privacy everywhere."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import go_live, set_viewers

pytestmark = pytest.mark.gen_test(timeout=90)

STREAM_FIELDS = {"id", "user", "title", "description", "thumbnail", "category", "is_live",
                 "viewers_count", "is_private", "started_at", "ended_at", "created_at",
                 "updated_at", "playback"}


async def test_create_prepared_stream(api):
    tokens = await api.register("alice")
    response = await api.post("/api/streams", {"title": "Speedrun", "description": "any%",
                                               "category_id": 7}, token=tokens["access_token"])
    assert response.status == 201
    stream = response.json
    assert set(stream) == STREAM_FIELDS
    assert stream["is_live"] is False and stream["playback"] is None
    assert stream["started_at"] is None and stream["ended_at"] is None
    assert stream["category"] == {"id": 7, "name": "Retro Games"}
    assert stream["user"]["username"] == "alice" and "email" not in stream["user"]
    assert "stream_key" not in str(stream)


@pytest.mark.parametrize("body,field", [
    ({}, "title"), ({"title": ""}, "title"), ({"title": "x" * 141}, "title"),
    ({"title": "ok", "category_id": 999}, "category_id"),
    ({"title": "ok", "category_id": "abc"}, "category_id"),
    ({"title": "ok", "is_live": True}, "is_live"),
    ({"title": "ok", "description": "x" * 5001}, "description"),
])
async def test_create_rejects_bad_input(api, body, field):
    tokens = await api.register("bob")
    response = await api.post("/api/streams", body, token=tokens["access_token"])
    assert response.status == 422 and field in response.json["error"]["fields"]


async def test_create_requires_auth(api):
    assert (await api.post("/api/streams", {"title": "x"})).status == 401


async def test_live_stream_shape_and_playback(api, services):
    tokens = await api.register("carol")
    stream_id = await go_live(api, services, tokens, title="Live!", category_id=1)
    stream = (await api.get(f"/api/streams/{stream_id}")).json
    assert stream["is_live"] is True and stream["started_at"].endswith("Z")
    assert stream["playback"] == {"hls": f"/hls/{stream_id}/master.m3u8"}
    assert stream["user"]["is_live"] is True
    assert (await api.get("/api/users/carol")).json["is_live"] is True


async def test_get_unknown_and_non_numeric_ids(api):
    assert (await api.get("/api/streams/999999")).status == 404
    assert (await api.get("/api/streams/abc")).status == 404
    assert (await api.get("/api/streams/-1")).status == 404


async def test_update_and_delete_are_owner_only(api, services):
    owner = await api.register("dave")
    other = await api.register("erin")
    stream_id = (await api.post("/api/streams", {"title": "Mine"},
                                token=owner["access_token"])).json["id"]
    forbidden = await api.put(f"/api/streams/{stream_id}", {"title": "Hijack"},
                              token=other["access_token"])
    assert forbidden.status == 403 and forbidden.json["error"]["code"] == "forbidden"
    assert (await api.delete(f"/api/streams/{stream_id}", token=other["access_token"])).status == 403
    assert (await api.put(f"/api/streams/{stream_id}", {"title": "x"})).status == 401
    updated = await api.put(f"/api/streams/{stream_id}", {"title": "Renamed", "category_id": 3,
                                                          "is_private": False},
                            token=owner["access_token"])
    assert updated.status == 200 and updated.json["title"] == "Renamed"
    assert updated.json["category"]["id"] == 3
    bad = await api.put(f"/api/streams/{stream_id}", {"category_id": 12345},
                        token=owner["access_token"])
    assert bad.status == 422
    assert (await api.put("/api/streams/424242", {"title": "x"},
                          token=owner["access_token"])).status == 404


async def test_delete_ends_a_live_stream(api, services):
    tokens = await api.register("frank")
    stream_id = await go_live(api, services, tokens)
    response = await api.delete(f"/api/streams/{stream_id}", token=tokens["access_token"])
    assert response.status == 204
    stream = (await api.get(f"/api/streams/{stream_id}")).json
    assert stream["is_live"] is False and stream["ended_at"] is not None
    assert stream["playback"] is None
    assert (await api.get("/api/streams")).json["data"] == []
    # Ending again is harmless and keeps the first end time.
    assert (await api.delete(f"/api/streams/{stream_id}", token=tokens["access_token"])).status == 204
    assert (await api.get(f"/api/streams/{stream_id}")).json["ended_at"] == stream["ended_at"]


async def test_list_defaults_to_live_sorted_by_viewers(api, services):
    ids = {}
    for index, viewers in enumerate([5, 50, 20]):
        tokens = await api.register(f"streamer{index}")
        ids[viewers] = await go_live(api, services, tokens, title=f"Stream {index}")
        await set_viewers(services, ids[viewers], viewers)
    offline = await api.register("offline")
    await api.post("/api/streams", {"title": "Not yet"}, token=offline["access_token"])
    body = (await api.get("/api/streams")).json
    assert [s["id"] for s in body["data"]] == [ids[50], ids[20], ids[5]]
    assert [s["viewers_count"] for s in body["data"]] == [50, 20, 5]
    assert body["pagination"] == {"next_cursor": None}
    not_live = (await api.get("/api/streams?is_live=false")).json["data"]
    assert [s["title"] for s in not_live] == ["Not yet"]


async def test_filters_and_sorts(api, services):
    alice = await api.register("alice")
    bob = await api.register("bob")
    a = await go_live(api, services, alice, title="Chess openings explained", category_id=10)
    await asyncio.sleep(0.01)
    b = await go_live(api, services, bob, title="Speedrunning Mario 100%", category_id=7)
    await set_viewers(services, a, 10)
    await set_viewers(services, b, 3)

    async def ids(query):
        response = await api.get(f"/api/streams?{query}")
        assert response.status == 200, response
        return [s["id"] for s in response.json["data"]]

    assert await ids("category_id=10") == [a]
    assert await ids("category_id=7") == [b]
    assert await ids("username=BOB") == [b]
    assert await ids("q=chess") == [a]
    assert await ids("q=MARIO") == [b]
    assert await ids("q=100%25") == [b]  # literal %, not a wildcard
    assert await ids("q=_") == []
    assert await ids("sort=viewers") == [a, b]
    assert await ids("sort=started_at") == [b, a]
    assert await ids("sort=created_at") == [b, a]
    assert await ids("category_id=10&q=mario") == []


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=-5", "limit"), ("limit=abc", "limit"),
    ("sort=random", "sort"), ("is_live=perhaps", "is_live"), ("category_id=x", "category_id"),
    ("cursor=garbage!!", "cursor"), ("unknown=1", "unknown"), ("limit=1&limit=2", "limit"),
])
async def test_list_rejects_bad_queries(api, query, field):
    response = await api.get(f"/api/streams?{query}")
    assert response.status == 422 and field in response.json["error"]["fields"], response


async def test_cursor_of_another_sort_is_rejected(api, services):
    for index in range(3):
        await go_live(api, services, await api.register(f"sorter{index}"))
    cursor = (await api.get("/api/streams?limit=1&sort=created_at")).json["pagination"]["next_cursor"]
    assert cursor
    response = await api.get(f"/api/streams?limit=1&sort=viewers&cursor={cursor}")
    assert response.status == 422


async def test_pagination_neither_repeats_nor_skips_under_concurrent_inserts(api, services):
    owners = [await api.register(f"page{i}") for i in range(12)]
    for tokens in owners[:9]:
        await api.post("/api/streams", {"title": "t"}, token=tokens["access_token"])
    original = {row["id"] for row in await services.db.fetch("SELECT id FROM streams")}
    seen: list[int] = []
    cursor = None
    inserted = iter(owners[9:])
    for sort in ("created_at",):
        while True:
            query = f"/api/streams?is_live=false&sort={sort}&limit=4"
            response = await api.get(query + (f"&cursor={cursor}" if cursor else ""))
            assert response.status == 200
            seen += [s["id"] for s in response.json["data"]]
            cursor = response.json["pagination"]["next_cursor"]
            newcomer = next(inserted, None)  # a new stream appears between pages
            if newcomer:
                await api.post("/api/streams", {"title": "new"}, token=newcomer["access_token"])
            if not cursor:
                break
    assert len(seen) == len(set(seen))
    assert original <= set(seen)


async def test_pagination_by_viewers_walks_every_live_stream_once(api, services):
    ids = []
    for index in range(7):
        tokens = await api.register(f"viewer{index}")
        stream_id = await go_live(api, services, tokens)
        await set_viewers(services, stream_id, index % 3)  # ties on purpose
        ids.append(stream_id)
    seen, cursor = [], None
    while True:
        body = (await api.get("/api/streams?limit=2" + (f"&cursor={cursor}" if cursor else ""))).json
        seen += [(s["viewers_count"], s["id"]) for s in body["data"]]
        cursor = body["pagination"]["next_cursor"]
        if not cursor:
            break
    assert sorted(i for _, i in seen) == sorted(ids)
    assert seen == sorted(seen, reverse=True)


async def test_user_streams_newest_first_including_ended(api, services):
    tokens = await api.register("gina")
    first = await go_live(api, services, tokens, title="first")
    await services.streams.end_stream(first)
    second = (await api.post("/api/streams", {"title": "second"},
                             token=tokens["access_token"])).json["id"]
    body = (await api.get("/api/users/gina/streams")).json
    assert [s["id"] for s in body["data"]] == [second, first]
    assert (await api.get("/api/users/nobody/streams")).status == 404


async def test_a_cursor_spelled_none_is_refused_cold_or_warm(api):
    # security.md#cursor-spelled-none: the cache key wrote a missing cursor and the text "None" alike.
    assert (await api.get("/api/streams?cursor=None&limit=7")).status == 422
    assert (await api.get("/api/streams?limit=7")).status == 200  # now cached
    refused = await api.get("/api/streams?cursor=None&limit=7")
    assert refused.status == 422 and "cursor" in refused.json["error"]["fields"]


async def test_long_queries_are_answered_but_not_remembered(api):
    # security.md#query-memo-memory: queries are parsed before the rate limit is counted; thousands of long
    # valid ones held ~33 MB per process in the parsed-query memo.
    from sf.handlers import inputs

    queries = [f"q={index:03d}" + "&" * 300 + "limit=5" for index in range(5)]
    for query in queries:
        assert (await api.get(f"/api/streams?{query}")).status == 200
    remembered = {raw for _, raw in inputs._QUERIES}
    assert not remembered & set(queries)
    assert (await api.get("/api/streams?limit=6")).status == 200
    assert "limit=6" in {raw for _, raw in inputs._QUERIES}  # short ones are


class TestPrivacy:
    """A private stream exists only for its owner and the viewers the owner invited."""

    @pytest.mark.gen_test(timeout=60)
    async def test_private_stream_visibility_everywhere(self, api, services):
        owner = await api.register("owner")
        invited = await api.register("invited")
        follower = await api.register("follower")
        stranger = await api.register("stranger")
        assert (await api.put("/api/stream/allowed-viewers/invited",
                              token=owner["access_token"])).status == 204
        # Following is not an invitation: anyone can follow anyone.
        await api.post("/api/users/owner/follow", token=follower["access_token"])
        stream_id = await go_live(api, services, owner, title="Secret", is_private=True)
        paths = [f"/api/streams/{stream_id}", "/api/streams", "/api/users/owner/streams",
                 "/api/categories/1/streams", "/api/streams?username=owner",
                 "/api/streams?q=Secret"]

        async def sees(token):
            results = []
            for path in paths:
                response = await api.get(path, token=token)
                if path == f"/api/streams/{stream_id}":
                    results.append(response.status == 200)
                else:
                    results.append(stream_id in [s["id"] for s in response.json["data"]])
            return results

        await api.put("/api/stream/settings", {"category_id": 1}, token=owner["access_token"])
        await api.put(f"/api/streams/{stream_id}", {"category_id": 1}, token=owner["access_token"])
        # Warm the caches as the allowed users first: a cache must never hand it to others.
        assert await sees(owner["access_token"]) == [True] * len(paths)
        assert await sees(invited["access_token"]) == [True] * len(paths)
        assert await sees(follower["access_token"]) == [False] * len(paths)
        assert await sees(stranger["access_token"]) == [False] * len(paths)
        assert await sees(None) == [False] * len(paths)
        hidden = await api.get(f"/api/streams/{stream_id}", token=stranger["access_token"])
        assert hidden.status == 404 and hidden.json["error"]["code"] == "not_found"
        # A stranger cannot tell it apart from a missing stream, even when trying to edit it.
        edit = await api.put(f"/api/streams/{stream_id}", {"title": "x"},
                             token=stranger["access_token"])
        assert edit.status == 404
        # The invited viewer cannot edit it either.
        edit = await api.put(f"/api/streams/{stream_id}", {"title": "x"},
                             token=invited["access_token"])
        assert edit.status == 403
        # Withdrawing the invite takes access (and new playback URLs) away at once.
        assert (await api.delete("/api/stream/allowed-viewers/invited",
                                 token=owner["access_token"])).status == 204
        assert await sees(invited["access_token"]) == [False] * len(paths)
        # An invitation shows it at once, though until then the stranger's lists were the
        # shared (public-only) pages.
        assert (await api.put("/api/stream/allowed-viewers/stranger",
                              token=owner["access_token"])).status == 204
        assert await sees(stranger["access_token"]) == [True] * len(paths)

    async def test_public_profile_never_reveals_a_private_live_stream(self, api, services):
        owner = await api.register("hidden")
        await go_live(api, services, owner, title="Secret", is_private=True)
        for path in ("/api/users/hidden", "/api/users/hidden/streams"):
            body = (await api.get(path)).json
            users = [body] if "username" in body else [s["user"] for s in body["data"]]
            assert all(user["is_live"] is False for user in users), body
        # Not through a cached public profile either, nor in lists of its other streams.
        await services.streams.end_stream(
            (await api.get("/api/users/hidden/streams",
                           token=owner["access_token"])).json["data"][0]["id"])
        public_id = await go_live(api, services, owner, title="Open", is_private=False)
        assert (await api.get("/api/users/hidden")).json["is_live"] is True
        assert (await api.get(f"/api/streams/{public_id}")).json["user"]["is_live"] is True


async def test_allowed_viewers_list_invite_and_revoke(api):
    owner = await api.register("host")
    for name in ("guest1", "guest2", "guest3"):
        await api.register(name)
        assert (await api.put(f"/api/stream/allowed-viewers/{name}",
                              token=owner["access_token"])).status == 204
    # Idempotent, case-insensitive user names.
    assert (await api.put("/api/stream/allowed-viewers/GUEST1",
                          token=owner["access_token"])).status == 204
    first = (await api.get("/api/stream/allowed-viewers?limit=2", token=owner["access_token"])).json
    assert [u["username"] for u in first["data"]] == ["guest3", "guest2"]
    assert set(first["data"][0]) == {"id", "username", "avatar", "bio", "followers_count",
                                     "created_at", "is_live"}
    rest = (await api.get(f"/api/stream/allowed-viewers?limit=2&cursor="
                          f"{first['pagination']['next_cursor']}",
                          token=owner["access_token"])).json
    assert [u["username"] for u in rest["data"]] == ["guest1"]
    assert rest["pagination"]["next_cursor"] is None
    assert (await api.delete("/api/stream/allowed-viewers/guest2",
                             token=owner["access_token"])).status == 204
    assert (await api.delete("/api/stream/allowed-viewers/guest2",
                             token=owner["access_token"])).status == 204
    left = (await api.get("/api/stream/allowed-viewers", token=owner["access_token"])).json
    assert [u["username"] for u in left["data"]] == ["guest3", "guest1"]
    # Each channel has its own list; nobody else can read or change it.
    other = await api.register("other")
    assert (await api.get("/api/stream/allowed-viewers",
                          token=other["access_token"])).json["data"] == []
    assert (await api.get("/api/stream/allowed-viewers")).status == 401
    # Unknown users, and inviting yourself.
    missing = await api.put("/api/stream/allowed-viewers/nobody", token=owner["access_token"])
    assert missing.status == 404
    itself = await api.put("/api/stream/allowed-viewers/host", token=owner["access_token"])
    assert itself.status == 422 and "username" in itself.json["error"]["fields"]
