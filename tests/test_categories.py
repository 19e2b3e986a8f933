"""Categories: seeded set, viewer totals, ordering, pagination, live streams of one."""

from __future__ import annotations

import pytest

from tests.helpers import go_live, set_viewers

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_seeded_categories_sorted_by_viewers_then_name(api, services):
    body = (await api.get("/api/categories?limit=100")).json
    names = [c["name"] for c in body["data"]]
    assert {"Just Chatting", "Music", "Art", "Science & Technology", "Sports", "IRL"} <= set(names)
    assert names == sorted(names)  # nobody live: all zero, so by name
    first = body["data"][0]
    assert set(first) == {"id", "name", "description", "thumbnail", "viewers_count",
                          "created_at", "updated_at"}
    assert first["description"] and first["thumbnail"]

    music = next(c["id"] for c in body["data"] if c["name"] == "Music")
    art = next(c["id"] for c in body["data"] if c["name"] == "Art")
    a = await go_live(api, services, await api.register("alice"), category_id=music)
    b = await go_live(api, services, await api.register("bob"), category_id=music)
    c = await go_live(api, services, await api.register("carol"), category_id=art)
    await set_viewers(services, a, 7)
    await set_viewers(services, b, 5)
    await set_viewers(services, c, 30)
    ordered = (await api.get("/api/categories?limit=100")).json["data"]
    assert [(x["name"], x["viewers_count"]) for x in ordered[:2]] == [("Art", 30), ("Music", 12)]
    # Ending a stream takes its viewers out of the category total at once.
    await services.streams.end_stream(c)
    assert (await api.get(f"/api/categories/{art}")).json["viewers_count"] == 0
    assert (await api.get(f"/api/categories/{music}")).json["viewers_count"] == 12


async def test_category_pagination_walks_all_once(api):
    seen, cursor = [], None
    while True:
        body = (await api.get("/api/categories?limit=5" + (f"&cursor={cursor}" if cursor else ""))).json
        seen += [c["id"] for c in body["data"]]
        cursor = body["pagination"]["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 14


async def test_get_category_and_its_live_streams(api, services):
    assert (await api.get("/api/categories/999")).status == 404
    assert (await api.get("/api/categories/abc")).status == 404
    assert (await api.get("/api/categories/999/streams")).status == 404
    live = await go_live(api, services, await api.register("dave"), category_id=2)
    tokens = await api.register("erin")
    await api.post("/api/streams", {"title": "prepared", "category_id": 2},
                   token=tokens["access_token"])
    streams = (await api.get("/api/categories/2/streams")).json["data"]
    assert [s["id"] for s in streams] == [live]
    assert (await api.get("/api/categories/2/streams?limit=0")).status == 422


async def test_a_categorys_streams_take_the_documented_query_and_only_it(api, services):
    """The category's streams read the stream-list query the document states for them
    (`CategoryStreamListQuerySchema`): the filters work, and a `category_id` in the query,
    which the path already names, is refused like any unknown field."""
    old = await go_live(api, services, await api.register("gina"), category_id=2, title="cello night")
    new = await go_live(api, services, await api.register("hank"), category_id=2, title="drums")
    await go_live(api, services, await api.register("ivan"), category_id=3, title="cello elsewhere")
    newest = (await api.get("/api/categories/2/streams?sort=started_at")).json["data"]
    assert [s["id"] for s in newest] == [new, old]
    found = (await api.get("/api/categories/2/streams?q=cello")).json["data"]
    assert [s["id"] for s in found] == [old]
    assert (await api.get("/api/categories/2/streams?username=hank")).json["data"][0]["id"] == new
    refused = await api.get("/api/categories/2/streams?category_id=3")
    assert refused.status == 422 and "category_id" in refused.json["error"]["fields"]
    parameters = (await api.get("/api/v1/openapi.json")).json["paths"][
        "/api/v1/categories/{category_id}/streams"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in parameters} == {
        ("category_id", "path"), ("limit", "query"), ("cursor", "query"), ("username", "query"),
        ("q", "query"), ("is_live", "query"), ("sort", "query")}


async def test_a_missing_category_stays_404_whatever_the_cache_holds(api):
    # The same filter through /api/streams is an empty page, cached: the category's own route
    # must not answer from it (its pages are cached only once the category was found).
    for _ in range(2):
        empty = await api.get("/api/streams?category_id=999")
        assert empty.status == 200 and empty.json["data"] == []
        missing = await api.get("/api/categories/999/streams")
        assert missing.status == 404 and missing.json["error"]["code"] == "not_found"


async def test_no_public_write_endpoints(api):
    token = (await api.register("frank"))["access_token"]
    assert (await api.post("/api/categories", {"name": "Mine"}, token=token)).status == 405
    assert (await api.put("/api/categories/1", {"name": "Mine"}, token=token)).status == 405
    assert (await api.delete("/api/categories/1", token=token)).status == 405


async def test_category_totals_never_count_private_streams(api, services):
    """security.md#private-viewers-in-category-totals: a private stream's audience showed in its
    category's viewers_count."""
    public = await go_live(api, services, await api.register("openly"), category_id=3)
    hidden = await go_live(api, services, await api.register("quietly"), category_id=3,
                           is_private=True)
    await set_viewers(services, public, 5)
    await set_viewers(services, hidden, 7)
    assert (await api.get("/api/categories/3")).json["viewers_count"] == 5
    # Going private (and back) moves the stream's viewers out of (and into) the total.
    await services.db.execute("UPDATE streams SET is_private = true WHERE id = $1", public)
    await services.cache.forget_public_views()
    assert (await api.get("/api/categories/3")).json["viewers_count"] == 0
    await services.db.execute("UPDATE streams SET is_private = false WHERE id = $1", hidden)
    await services.cache.forget_public_views()
    assert (await api.get("/api/categories/3")).json["viewers_count"] == 7
