"""Media node liveness (issue 19 point 4): two real media nodes (nginx-rtmp + `sf serve`) share
PostgreSQL and a Redis server of this module's own, which one test stops and starts again.

- Each node heartbeats its addresses and load into the registry.
- A Redis outage longer than the heartbeat TTL takes no stream offline.
- A SIGKILLed node: its streams are offline within 15 s, viewers on the surviving node are
  told, the encoder's reconnect to the survivor resumes the same stream id; a stream whose
  encoder does not come back ends after the grace period, its statistics closed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import tornado.httpclient
import tornado.websocket
from redis.asyncio import Redis

from harness.platform import Platform, redis_up, start_platforms, wait_for
from harness.ports import reserve_ports
from sf.services.media_nodes import NODE_KEY, NODES_KEY, MediaNode, MediaNodeRegistry
from tests.helpers import fetch_value, run_private

REDIS_PORT = reserve_ports(2)[0]  # and the next one, where nothing listens
GRACE = 12
OFFLINE_WITHIN = 15.0


class RedisServer:
    """A redis-server of this module's own (append-only, as production runs it)."""

    def __init__(self, directory: Path) -> None:
        self.command = [shutil.which("redis-server") or "redis-server", "--port",
                        str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                        "yes", "--appendfsync", "always", "--dir", str(directory)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_up(REDIS_PORT), 10, what="redis-server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("media-nodes-redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def nodes(base_config, tmp_path_factory, redis_server) -> Iterator[tuple[Platform, Platform]]:
    common = {"SF_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
              "SF_PUBLISH_GRACE_SECONDS": str(GRACE), "SF_STATS_SAMPLE_SECONDS": "1",
              "SF_RATE_LIMIT_ANONYMOUS": "100000"}
    a = Platform(base_config, tmp_path_factory.mktemp("media-node-a"), **common)
    b = Platform(base_config, tmp_path_factory.mktemp("media-node-b"), **common)
    start_platforms(a, b)
    yield a, b
    b.stop()
    a.stop()


def registry_view() -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        redis = Redis.from_url(f"redis://127.0.0.1:{REDIS_PORT}/0")
        try:
            return await MediaNodeRegistry(redis, 6).alive()
        finally:
            await redis.aclose()

    return run_private(read())  # type: ignore[no-any-return]


def query(base_config: Any, statement: str, *args: Any) -> Any:
    return fetch_value(base_config.database_url, statement, *args)


class Viewer:
    """A viewer WebSocket that keeps every message it gets."""

    def __init__(self, connection: tornado.websocket.WebSocketClientConnection) -> None:
        self.connection = connection
        self.messages: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (message := await self.connection.read_message()) is not None:
            self.messages.append(json.loads(message))

    def stream_states(self) -> list[bool]:
        return [m["is_live"] for m in self.messages if m["type"] == "stream"]

    async def until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")
            await asyncio.sleep(0.05)


async def watch(node: Platform, stream_id: int) -> Viewer:
    url = node.base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/viewers"
    request = tornado.httpclient.HTTPRequest(url, headers={"Origin": node.base_url},
                                             request_timeout=10)
    return Viewer(await tornado.websocket.websocket_connect(request))


async def poll(what: Any, timeout: float, description: str) -> Any:
    """Poll a blocking check from a coroutine, letting the loop (the sockets) run between."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {description}")
        await asyncio.sleep(0.2)
    return value


def test_no_node_is_judged_dead_unless_the_judges_own_view_of_redis_is_sound(base_config):
    """The registry alone, on the session's Redis: a node whose heartbeat stopped is dead only
    to a judge whose own heartbeats have reached Redis for a whole TTL and are there now."""

    def node(url: str) -> MediaNode:
        return MediaNode(url, url, "127.0.0.1:1", "rtmp://127.0.0.1:1/live", 0, 1, None, True)

    async def scenario() -> None:
        redis = Redis.from_url(base_config.redis_url)
        unreachable = Redis.from_url(f"redis://127.0.0.1:{REDIS_PORT + 1}/0",
                                     socket_connect_timeout=1)
        a, judge = "http://node-a.test", "http://judge.test"
        try:
            await redis.delete(NODES_KEY, NODE_KEY.format(a), NODE_KEY.format(judge))
            # A TTL of 0.6 s (heartbeats are kept in milliseconds): long enough that two calls
            # in a row fall within it, short enough to wait out twice.
            node_a, registry = MediaNodeRegistry(redis, 0.6), MediaNodeRegistry(redis, 0.6)
            assert await node_a.beat(node(a)) and await registry.beat(node(judge))
            assert await registry.dead_among([a], judge) == []  # not trusted yet
            await asyncio.sleep(0.75)  # a's heartbeat expires; the judge's too
            assert await registry.dead_among([a], judge) == []  # its own heartbeat is missing
            assert await registry.beat(node(judge))
            assert await registry.dead_among([a, "http://never-seen.test"], judge) == [a]
            # The judge's own Redis fails once: it judges nothing for a TTL after it is back.
            registry.redis = unreachable
            assert not await registry.beat(node(judge))
            registry.redis = redis
            assert await registry.beat(node(judge))
            assert await registry.dead_among([a], judge) == []
            await asyncio.sleep(0.7)
            assert await registry.beat(node(judge))
            assert await registry.dead_among([a], judge) == [a]
            assert set(await registry.alive()) == {judge}
            await registry.withdraw(a)  # stopped on purpose: gone, not dead
            assert await registry.dead_among([a], judge) == []
        finally:
            await redis.delete(NODES_KEY, NODE_KEY.format(a), NODE_KEY.format(judge))
            await redis.aclose()
            await unreachable.aclose()

    run_private(scenario())


@pytest.mark.platform
def test_each_media_node_heartbeats_its_addresses_and_load(nodes):
    a, b = nodes
    alive = wait_for(lambda: (view := registry_view()) and len(view) == 2 and view, 10,
                     what="both heartbeats")
    for node in (a, b):
        entry = alive[node.config.media_node_url]
        assert entry.origin == node.config.media_origin
        assert entry.rtmp_url == node.config.rtmp_url
        assert entry.capacity == 64 and entry.transcoders == 0 and entry.has_room
        assert entry.node_id == f"{node.config.node_id}.0"  # the ingest process


@pytest.mark.platform
def test_a_redis_outage_longer_than_the_heartbeat_takes_no_stream_offline(
        nodes, redis_server, base_config):
    a, _ = nodes
    user = a.register("weathers_outage")
    publisher = a.publish(user["key"], seconds=120)
    stream = wait_for(lambda: a.live_stream_of("weathers_outage"), 20, what="live")
    live = "SELECT is_live FROM streams WHERE id = $1"
    try:
        redis_server.kill()
        down_until = time.monotonic() + 9  # longer than the TTL: every heartbeat expires
        while time.monotonic() < down_until:
            assert query(base_config, live, stream["id"]) is True
            time.sleep(0.5)
        redis_server.start()  # the expired heartbeats come back from the append-only file
        wait_for(lambda: len(registry_view()) == 2, 15, what="both heartbeats again")
        watched_until = time.monotonic() + 8
        while time.monotonic() < watched_until:
            assert query(base_config, live, stream["id"]) is True
            time.sleep(0.3)
        assert publisher.poll() is None
    finally:
        publisher.kill()
        publisher.wait()
        assert a.request("DELETE", f"/api/streams/{stream['id']}", token=user["token"])[0] == 204


@pytest.mark.platform
def test_a_killed_media_node_goes_offline_and_its_encoder_resumes_on_the_survivor(
        nodes, base_config):
    a, b = nodes
    returning, lost = a.register("comes_back"), a.register("never_back")
    a.publish(returning["key"], seconds=120)
    a.publish(lost["key"], seconds=120)
    stream = wait_for(lambda: a.live_stream_of("comes_back"), 20, what="live on A")
    gone = wait_for(lambda: a.live_stream_of("never_back"), 20, what="the second live on A")
    wait_for(lambda: a.get(f"/hls/{stream['id']}/master.m3u8")[0] == 200, 30,
             what="A's transcoder")
    wait_for(lambda: query(base_config, "SELECT count(*) FROM stream_statistics WHERE "
                           "stream_id = ANY($1::bigint[])", [stream["id"], gone["id"]]) == 2,
             20, what="the statistics of both streams")

    async def scenario() -> None:
        viewer = await watch(b, stream["id"])
        await viewer.until(lambda: any(m["type"] == "viewers" for m in viewer.messages), 10,
                           "the first viewers message")
        a.kill()
        killed = time.monotonic()
        seen = await poll(lambda: b.stream(stream["id"])["is_live"] is False, OFFLINE_WITHIN + 5,
                          "the stream to go offline")
        offline_after = time.monotonic() - killed
        assert seen and offline_after <= OFFLINE_WITHIN, offline_after
        await viewer.until(lambda: False in viewer.stream_states(), 5, "the offline message")
        offline = b.stream(stream["id"])
        assert offline["ended_at"] is None  # offline, not ended: the encoder may come back
        assert b.live_stream_of("comes_back") is None

        # The encoder reconnects, through the balancer, to the surviving node.
        b.publish(returning["key"], seconds=120)
        resumed = await poll(lambda: b.live_stream_of("comes_back"), 20, "the resume on B")
        assert resumed["id"] == stream["id"]
        await viewer.until(lambda: viewer.stream_states()[-1:] == [True], 10,
                           "the live-again message")
        await poll(lambda: b.get(f"/hls/{stream['id']}/master.m3u8")[0] == 200, 30,
                   "B's transcoder")
        viewer.connection.close()

    asyncio.run(scenario())
    assert query(base_config, "SELECT media_node FROM streams WHERE id = $1",
                 stream["id"]) == b.config.media_node_url
    # The other encoder never comes back: ended after the grace, statistics closed; the
    # resumed stream's stayed open through its offline spell.
    ended = wait_for(lambda: b.stream(gone["id"])["ended_at"], GRACE + 10,
                     what="the lost stream to end")
    assert ended and b.stream(gone["id"])["is_live"] is False
    closed = "SELECT closed FROM stream_statistics WHERE stream_id = $1"
    wait_for(lambda: query(base_config, closed, gone["id"]) is True, 10,
             what="the lost stream's statistics to close")
    assert query(base_config, closed, stream["id"]) is False
    logs = b.logs()
    assert "media node lost" in logs and a.config.media_node_url in logs


@pytest.mark.platform
def test_an_encoder_back_before_the_heartbeat_expires_takes_its_stream_over(
        base_config, tmp_path, redis_server):
    """A media node dies and its encoder reconnects to another node at once, as OBS retries,
    long before the dead node's heartbeat expires (a TTL of 15 s here): the survivor sees the
    missed heartbeat and the refused control port, takes the stream over and resumes it, rather
    than refusing the encoder until the TTL ran out and a sweep noticed."""
    ttl = 15.0
    common = {"SF_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
              "SF_PUBLISH_GRACE_SECONDS": str(GRACE), "SF_RATE_LIMIT_ANONYMOUS": "100000",
              "SF_MEDIA_NODE_HEARTBEAT_TTL": str(int(ttl))}
    a = Platform(base_config, tmp_path / "a", **common)
    b = Platform(base_config, tmp_path / "b", **common)
    started = time.monotonic()
    start_platforms(a, b)
    try:
        user = a.register("quick_return")
        a.publish(user["key"], seconds=120)
        stream = wait_for(lambda: a.live_stream_of("quick_return"), 20, what="live on A")
        # B judges no node before its own heartbeats held for a whole TTL.
        time.sleep(max(0.0, started + ttl + 1 - time.monotonic()))
        with redis.Redis(port=REDIS_PORT) as client:
            a.kill()
            last_beat = float(client.zscore(NODES_KEY, a.config.media_node_url) or 0)
        assert last_beat > 0

        def resumed_on_b() -> bool:
            if query(base_config, "SELECT media_node FROM streams WHERE id = $1 AND is_live",
                     stream["id"]) == b.config.media_node_url:
                return True
            publisher = b.publish(user["key"], seconds=120)  # refused while A holds it
            time.sleep(1)
            if publisher.poll() is not None:
                b.publishers.remove(publisher)
            return False

        wait_for(resumed_on_b, ttl + 10, interval=0.1, what="the stream resumed on B")
        taken_over = time.time() - last_beat
        print(f"\nresumed on B {taken_over:.1f} s after A's last heartbeat (TTL {ttl:.0f} s)")
        assert taken_over < ttl
        assert "media node lost" in b.logs()
        wait_for(lambda: b.get(f"/hls/{stream['id']}/master.m3u8")[0] == 200, 30,
                 what="B's transcoder")
    finally:
        b.stop()
        a.stop()
