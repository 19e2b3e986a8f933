"""Live viewer totals into PostgreSQL and stream statistics (API.md "Viewers and statistics").

Viewers are simulated the way API processes report them: `ViewerCounts.flush` of viewer ids
on the real Redis, under made-up node ids, with no minimum dwell (tests/test_viewer_counts_exact.py
has the dwell). Time is scripted through `sample(now=...)`, with `started_at` moved into the
past so that the scripted samples fall inside the stream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import datetime

import pytest
from redis.asyncio import Redis

from sf.cache import Cache
from sf.db import statistics as statistics_db
from sf.services.statistics import LeaderLock, StatisticsService
from sf.services.viewer_counts import ALIVE_KEY, LEAVES, SIGNED_IN, ViewerCounts
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(base_config):
    return base_config.replace(viewer_min_dwell_seconds=0)


def counts_of(redis: Redis, node_id: str) -> ViewerCounts:
    return ViewerCounts(redis, node_id, anonymous_per_network=4, min_dwell_seconds=0)


class Process:
    """One API process's viewers, sent to Redis the way its hub sends them."""

    def __init__(self, services, node_id: str) -> None:
        self.redis = services.redis
        self.node_id = node_id
        self.counts = counts_of(services.redis, node_id)
        self.held: dict[int, set[str]] = {}
        self.fresh = True

    async def hold(self, viewers: dict[int, int | list[str]]) -> None:
        """Hold exactly these viewers of these streams: a number means that many of this
        process's own signed-in viewers, a list those viewer ids."""
        changes = {}
        for stream_id, who in viewers.items():
            ids = ({f"u{self.node_id}-{index}" for index in range(who)} if isinstance(who, int)
                   else set(who))
            before = self.held.get(stream_id, set())
            changes[stream_id] = {**{viewer: SIGNED_IN for viewer in ids - before},
                                  **{viewer: LEAVES for viewer in before - ids}}
            self.held[stream_id] = ids
        outcome = await self.counts.flush(changes, {}, fresh=self.fresh)
        self.fresh = False
        assert not outcome.lost and not outcome.refused

    async def die(self) -> None:
        """The process stops renewing its heartbeat (here: it lapses at once)."""
        await self.redis.delete(ALIVE_KEY.format(self.counts.instance))

STREAM_STATISTICS = {"stream_id", "peak_viewers", "average_viewers", "unique_viewers",
                     "watch_time_seconds", "duration_seconds", "followers_gained", "timeline"}
USER_STATISTICS = {"username", "followers_count", "total_streams", "total_stream_seconds",
                   "total_watch_time_seconds", "peak_viewers", "average_viewers",
                   "last_stream_at"}


async def started_in_the_past(services, stream_id: int, seconds: int) -> float:
    """Move the stream's start `seconds` into the past; its new start as epoch seconds."""
    started = await services.db.fetchval(
        "UPDATE streams SET started_at = now() - make_interval(secs => $2) WHERE id = $1"
        " RETURNING started_at", stream_id, float(seconds))
    return float(started.timestamp())


def parse_time(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_scripted_timeline_gives_exact_statistics(api, services):
    owner = await api.register("streamer")
    token = owner["access_token"]
    stream_id = await go_live(api, services, owner)
    start = await started_in_the_past(services, stream_id, 100)
    node_a = Process(services, "test-node-a")
    node_b = Process(services, "test-node-b")
    stats = services.statistics

    await node_a.hold({stream_id: ["v1", "v2", "v3"]})
    await node_b.hold({stream_id: ["v4", "v5"]})
    assert await stats.sample(now=start + 10) == 1          # 5 viewers, 10 s since the start
    await node_a.hold({stream_id: ["v1", "v2", "v3", "v4"]})
    await node_b.hold({stream_id: ["v1", "v5", "v6", "v7", "v8"]})  # v1, v4 on both: once
    assert await stats.sample(now=start + 20) == 1          # 8 viewers × 10 s
    await node_b.hold({stream_id: []})
    await node_a.hold({stream_id: ["v1"]})
    assert await stats.sample(now=start + 30) == 1          # 1 viewer × 10 s
    # Too soon after the previous sample (another leader overlapping): not counted twice.
    assert await stats.sample(now=start + 33) == 0
    await node_a.hold({stream_id: ["v1", "v2", "v3", "v4", "v5", "v6"]})
    # After a 45 s pause the step counts at most 2 × 10 s: 6 × 20.
    assert await stats.sample(now=start + 75) == 1

    body = (await api.get(f"/api/streams/{stream_id}/statistics", token=token)).json
    assert set(body) == STREAM_STATISTICS
    assert body["stream_id"] == stream_id
    assert body["peak_viewers"] == 8
    assert body["average_viewers"] == 5.0                    # (5 + 8 + 1 + 6) / 4
    assert body["unique_viewers"] == 8                       # v1 … v8
    assert body["watch_time_seconds"] == 50 + 80 + 10 + 120
    assert 100 <= body["duration_seconds"] <= 102             # live: up to now
    assert body["followers_gained"] == 0
    assert [point["viewers"] for point in body["timeline"]] == [5, 8, 1, 6]
    assert [round(parse_time(point["ts"]) - start, 3) for point in body["timeline"]] \
        == [10, 20, 30, 75]

    # A ninth viewer comes after the last sample (a hub reads the total, which counts them
    # as unique); then the stream ends (about 25 s after the last sample).
    await node_a.hold({stream_id: ["v1", "v2", "v3", "v4", "v5", "v6", "v9"]})
    await services.counts.totals([stream_id])
    assert (await api.delete(f"/api/streams/{stream_id}", token=token)).status == 204
    assert await stats.sample() == 0                          # nothing live: closing only
    assert await stats.sample() == 0                          # closed once, not again
    body = (await api.get(f"/api/streams/{stream_id}/statistics", token=token)).json
    assert body["unique_viewers"] == 9
    assert body["peak_viewers"] == 8
    # The last interval counts with the last sample's viewers, capped like any step: 6 × 20.
    assert body["watch_time_seconds"] == 260 + 120
    assert 100 <= body["duration_seconds"] <= 102
    ended = (await api.get(f"/api/streams/{stream_id}")).json["ended_at"]
    assert body["duration_seconds"] == round(parse_time(ended) - start)
    assert len(body["timeline"]) == 4


async def test_a_stream_never_sampled_has_zero_statistics(api, services):
    owner = await api.register("quiet")
    prepared = (await api.post("/api/streams", {"title": "Soon"},
                               token=owner["access_token"])).json["id"]
    body = (await api.get(f"/api/streams/{prepared}/statistics")).json
    assert body == {"stream_id": prepared, "peak_viewers": 0, "average_viewers": 0.0,
                    "unique_viewers": 0, "watch_time_seconds": 0, "duration_seconds": 0,
                    "followers_gained": 0, "timeline": []}


async def test_timeline_only_for_the_owner_and_private_statistics_hidden(api, services):
    owner = await api.register("owner")
    invited = await api.register("invited")
    stranger = await api.register("stranger")
    await api.put("/api/stream/allowed-viewers/invited", token=owner["access_token"])
    stream_id = await go_live(api, services, owner, is_private=True)
    await Process(services, "test-node-a").hold({stream_id: 4})
    assert await services.statistics.sample() == 1
    path = f"/api/streams/{stream_id}/statistics"

    mine = await api.get(path, token=owner["access_token"])
    assert mine.status == 200 and mine.json["peak_viewers"] == 4
    assert [point["viewers"] for point in mine.json["timeline"]] == [4]
    theirs = await api.get(path, token=invited["access_token"])
    assert theirs.status == 200
    assert theirs.json == {**mine.json, "timeline": []}
    # To anyone else a private stream does not exist, exactly like GET /api/streams/{id}.
    for token in (stranger["access_token"], None):
        hidden = await api.get(path, token=token)
        plain = await api.get(f"/api/streams/{stream_id}", token=token)
        assert hidden.status == plain.status == 404
        assert hidden.json == plain.json
    assert (await api.get("/api/streams/999999/statistics")).status == 404
    assert (await api.get(f"{path}?detail=1", token=owner["access_token"])).status == 422

    # A public stream's statistics are everyone's, its timeline still the owner's only.
    await api.put(f"/api/streams/{stream_id}", {"is_private": False}, token=owner["access_token"])
    public = await api.get(path)
    assert public.status == 200 and public.json["peak_viewers"] == 4
    assert public.json["timeline"] == []


async def test_followers_gained_only_while_live(api, services):
    star = await api.register("star")
    fans = [await api.register(f"fan{index}") for index in range(5)]

    async def follow(fan, method="POST"):
        response = await api.request(method, "/api/users/star/follow", token=fan["access_token"])
        assert response.status == 204

    async def gained(stream_id):
        body = (await api.get(f"/api/streams/{stream_id}/statistics")).json
        return body["followers_gained"]

    await follow(fans[0])                               # before the stream: not gained by it
    first = await go_live(api, services, star)
    await follow(fans[1])
    await follow(fans[2])
    await follow(fans[1])                               # idempotent: no new follow row
    assert await gained(first) == 2
    for method in ("DELETE", "POST", "DELETE", "POST"):  # toggling cannot inflate it
        await follow(fans[2], method)
    assert await gained(first) == 2
    await follow(fans[0], "DELETE")                     # lost a follower from before: not a gain undone
    assert await gained(first) == 2
    await services.streams.end_stream(first)
    await follow(fans[3])                               # after the end: gained by no stream
    await follow(fans[1], "DELETE")                     # nor taken back from the ended one
    assert await gained(first) == 2
    second = await go_live(api, services, star)
    await follow(fans[4])
    assert (await gained(first), await gained(second)) == (2, 1)
    # The counter moved in the same transactions as the follow rows it counts.
    assert (await api.get("/api/users/star")).json["followers_count"] == 3


async def test_user_statistics_aggregate_and_privacy(api, services):
    alice = await api.register("alice")
    bob = await api.register("bob")
    await api.register("carol")
    await api.post("/api/users/alice/follow", token=bob["access_token"])
    await api.put("/api/stream/allowed-viewers/bob", token=alice["access_token"])
    node = Process(services, "test-node-a")
    stats = services.statistics

    public = await go_live(api, services, alice, title="Open")
    start = await started_in_the_past(services, public, 100)
    await node.hold({public: 4})
    await stats.sample(now=start + 10)                  # 4 × 10
    await node.hold({public: 10})
    await stats.sample(now=start + 20)                  # 10 × 10
    await services.streams.end_stream(public)          # tail: 10 × 20 (capped)
    await node.hold({public: 0})

    private = await go_live(api, services, alice, title="Closed", is_private=True)
    private_start = await started_in_the_past(services, private, 50)
    await node.hold({private: 20})
    await stats.sample(now=private_start + 10)         # 20 × 10
    await services.streams.end_stream(private)         # tail: 20 × 20
    await stats.sample()                                # closes both
    # A prepared stream that never went live is no stream in the totals.
    await api.post("/api/streams", {"title": "Later"}, token=alice["access_token"])

    public_started = (await api.get(f"/api/streams/{public}")).json["started_at"]
    private_started = (await api.get(f"/api/streams/{private}",
                                     token=alice["access_token"])).json["started_at"]
    for token in (None, bob["access_token"]):           # an invited viewer is not the owner
        body = (await api.get("/api/users/alice/statistics", token=token)).json
        assert set(body) == USER_STATISTICS
        assert 100 <= body.pop("total_stream_seconds") <= 102
        assert body == {"username": "alice", "followers_count": 1, "total_streams": 1,
                        "total_watch_time_seconds": 40 + 100 + 200, "peak_viewers": 10,
                        "average_viewers": 7.0, "last_stream_at": public_started}
    own = (await api.get("/api/users/ALICE/statistics", token=alice["access_token"])).json
    assert 150 <= own.pop("total_stream_seconds") <= 153
    assert own == {"username": "alice", "followers_count": 1, "total_streams": 2,
                   "total_watch_time_seconds": 340 + 200 + 400, "peak_viewers": 20,
                   "average_viewers": 11.33, "last_stream_at": private_started}

    never = (await api.get("/api/users/carol/statistics")).json
    assert never == {"username": "carol", "followers_count": 0, "total_streams": 0,
                     "total_stream_seconds": 0, "total_watch_time_seconds": 0,
                     "peak_viewers": 0, "average_viewers": 0.0, "last_stream_at": None}
    assert (await api.get("/api/users/ghost/statistics")).status == 404
    assert (await api.get("/api/users/alice/statistics?x=1")).status == 422


async def test_sync_viewers_drives_sorting_and_category_totals(api, services):
    categories = (await api.get("/api/categories?limit=100")).json["data"]
    music = next(c["id"] for c in categories if c["name"] == "Music")
    art = next(c["id"] for c in categories if c["name"] == "Art")
    ids = {
        "ann": await go_live(api, services, await api.register("ann"), category_id=music),
        "ben": await go_live(api, services, await api.register("ben"), category_id=music),
        "cat": await go_live(api, services, await api.register("cat"), category_id=art),
    }
    node_a = Process(services, "test-node-a")
    node_b = Process(services, "test-node-b")

    async def listed():
        streams = (await api.get("/api/streams?sort=viewers")).json["data"]
        return [(s["user"]["username"], s["viewers_count"]) for s in streams]

    async def category_totals():
        data = (await api.get("/api/categories?limit=100")).json["data"]
        return {c["id"]: c["viewers_count"] for c in data if c["id"] in (music, art)}

    assert await listed() == [("cat", 0), ("ben", 0), ("ann", 0)]   # also warms the cache
    await node_a.hold({ids["ann"]: 3, ids["ben"]: 10, ids["cat"]: 1})
    await node_b.hold({ids["ann"]: 20, ids["cat"]: 2})
    assert sorted(await services.statistics.sync_viewers()) == sorted(ids.values())
    assert await listed() == [("ann", 23), ("ben", 10), ("cat", 3)]
    assert await category_totals() == {music: 33, art: 3}
    top = (await api.get("/api/categories?limit=1")).json["data"][0]
    assert top["id"] == music

    # Nothing changed: no write, and the cached lists stay valid.
    generation = await services.cache.generation("streams")
    assert await services.statistics.sync_viewers() == []
    assert await services.cache.generation("streams") == generation

    # Node B dies: its heartbeat lapses and its viewers stop counting.
    await node_b.die()
    assert sorted(await services.statistics.sync_viewers()) == sorted([ids["ann"], ids["cat"]])
    assert await listed() == [("ben", 10), ("ann", 3), ("cat", 1)]
    assert await category_totals() == {music: 13, art: 1}
    # Statistics count only live nodes as well; the peak is the highest total the platform
    # showed (the lists above, node B still alive).
    assert await services.statistics.sample() == 3
    body = (await api.get(f"/api/streams/{ids['ann']}/statistics")).json
    assert body["average_viewers"] == 3.0
    peaks = [(await api.get(f"/api/streams/{ids[name]}/statistics")).json["peak_viewers"]
             for name in ("ann", "ben", "cat")]
    assert peaks == [23, 10, 3]

    # An ended stream is left alone (end_stream zeroed it), whatever Redis still holds, even
    # when it ends between the sync's read of the live streams and its write.
    await services.streams.end_stream(ids["ben"])
    await services.statistics.sync_viewers()
    assert await statistics_db.set_viewer_counts(services.db, {ids["ben"]: 10}) == []
    assert await services.db.fetchval("SELECT viewers_count FROM streams WHERE id = $1",
                                      ids["ben"]) == 0
    assert await category_totals() == {music: 3, art: 1}


async def test_the_sync_gives_way_to_a_stream_change_in_progress(api, services):
    stream_id = await go_live(api, services, await api.register("busy"))
    await Process(services, "test-node-a").hold({stream_id: 4})
    async with services.db.acquire() as connection, connection.transaction():
        # A user's request holds the stream row (as ending the stream does): the sync waits
        # at most its lock timeout, then leaves the row for the next round.
        await connection.execute("SELECT 1 FROM streams WHERE id = $1 FOR UPDATE", stream_id)
        started = asyncio.get_running_loop().time()
        assert await services.statistics.sync_viewers() == []
        assert asyncio.get_running_loop().time() - started < 0.9   # before the deadlock check
    assert await services.statistics.sync_viewers() == [stream_id]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_redis_down_keeps_the_last_known_totals(api, services, caplog):
    owner = await api.register("steady")
    stream_id = await go_live(api, services, owner)
    await Process(services, "test-node-a").hold({stream_id: 7})
    await services.statistics.sync_viewers()
    assert await services.statistics.sample() == 1
    before = (await api.get(f"/api/streams/{stream_id}/statistics")).json

    # A second node whose Redis is unreachable (the real PostgreSQL, a closed Redis port).
    down = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    cut_off = StatisticsService(services.config, services.db, down,
                                counts_of(down, "cut-off"), Cache(down, 2), services.streams)
    try:
        with caplog.at_level(logging.INFO, logger="sf.statistics"):
            for _ in range(3):
                assert await cut_off.sync_viewers() == []
                assert await cut_off.sample() == 0
                assert await cut_off.tick(sample_due=True) is False   # cannot lead either
            warnings = [r for r in caplog.records
                        if r.name == "sf.statistics" and r.levelno == logging.WARNING]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]   # once per outage
            # Redis back (here: the node's client pointed at the live one): logged once more.
            cut_off.counts = counts_of(services.redis, "cut-off")
            assert await cut_off.sync_viewers() == []
            assert [r.getMessage() for r in caplog.records
                    if r.name == "sf.statistics" and r.levelno == logging.INFO] \
                == ["Redis reachable again"]
    finally:
        await down.aclose()
    # The last known totals stand, for the API and the statistics alike.
    assert (await api.get(f"/api/streams/{stream_id}")).json["viewers_count"] == 7
    assert (await api.get(f"/api/streams/{stream_id}/statistics")).json == before


async def test_one_leader_at_a_time_and_takeover(services):
    first = LeaderLock(services.redis, "sf:leader:test", ttl=0.5, owner="node-1")
    second = LeaderLock(services.redis, "sf:leader:test", ttl=0.5, owner="node-1")  # same node id
    assert await first.hold() is True
    assert await second.hold() is False
    await asyncio.sleep(0.3)
    assert await first.hold() is True          # renewed by its holder...
    await asyncio.sleep(0.3)
    assert await second.hold() is False        # ...so still held past the first TTL
    await asyncio.sleep(0.7)                   # the holder stopped renewing: it lapses
    assert await second.hold() is True
    assert await first.hold() is False
    await second.release()
    assert await first.hold() is True


async def test_only_the_leader_syncs(api, services):
    stream_id = await go_live(api, services, await api.register("solo"))
    await Process(services, "test-node-a").hold({stream_id: 5})
    other = StatisticsService(services.config, services.db, services.redis, services.counts,
                              services.cache, services.streams)
    assert await services.statistics.tick(sample_due=False) is True
    await Process(services, "test-node-a").hold({stream_id: 6})
    assert await other.tick(sample_due=True) is False
    query = "SELECT viewers_count FROM streams WHERE id = $1"
    assert await services.db.fetchval(query, stream_id) == 5
    assert await services.db.fetchval(
        "SELECT count(*) FROM stream_viewer_samples WHERE stream_id = $1", stream_id) == 0
    await services.statistics.leader.release()  # the leader steps down; the other takes over
    assert await other.tick(sample_due=True) is True
    assert await services.db.fetchval(query, stream_id) == 6
    assert await services.db.fetchval(
        "SELECT count(*) FROM stream_viewer_samples WHERE stream_id = $1", stream_id) == 1


async def test_the_node_runs_the_sync_in_the_background(api, services):
    stream_id = await go_live(api, services, await api.register("running"))
    await Process(services, "test-node-a").hold({stream_id: 9})
    await services.start()
    try:
        for _ in range(50):
            if (await api.get(f"/api/streams/{stream_id}")).json["viewers_count"] == 9:
                break
            await asyncio.sleep(0.1)
        assert (await api.get(f"/api/streams/{stream_id}")).json["viewers_count"] == 9
        body = (await api.get(f"/api/streams/{stream_id}/statistics")).json
        assert body["peak_viewers"] == 9           # the first round samples at once
    finally:
        await services.stop()
    assert await services.redis.get("sf:leader:statistics") is None  # handed over on stop


async def test_statistics_are_in_the_openapi_document(api):
    spec = (await api.get("/api/openapi.json")).json
    for path, schema in (("/api/v1/streams/{stream_id}/statistics", "StreamStatisticsSchema"),
                         ("/api/v1/users/{username}/statistics", "UserStatisticsSchema")):
        operation = spec["paths"][path]["get"]
        # Its own answers plus the shared edge's (token checks, rate limit).
        assert set(operation["responses"]) == {"200", "400", "401", "404", "422", "429", "503"}
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] \
            == {"$ref": f"#/components/schemas/{schema}"}
    assert set(spec["components"]["schemas"]["StreamStatisticsSchema"]["properties"]) \
        == STREAM_STATISTICS
    assert set(spec["components"]["schemas"]["UserStatisticsSchema"]["properties"]) \
        == USER_STATISTICS
