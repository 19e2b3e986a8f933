"""Live viewers over WebSocket, for real: nginx + two API nodes sharing PostgreSQL and Redis,
real WebSocket clients, nodes killed and Redis restarted under them."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid

import asyncpg
import pytest
import redis
import tornado.httpclient
import tornado.websocket

from harness.client import connect
from harness.platform import Platform, redis_up, wait_for
from harness.ports import reserve_port
from sf.db.migrate import drop_database, recreate_database
from sf.services.viewer_counts import HOLDERS_KEY

pytestmark = pytest.mark.platform

CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED, CLOSE_GOING_AWAY = 4404, 4401, 1001


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("viewers-node"),
                    SF_RATE_LIMIT_ANONYMOUS="100000", SF_RATE_LIMIT_USER="100000").start()
    yield node
    node.stop()


def prepared_stream(platform: Platform, username: str, private: bool = False) -> tuple[int, str]:
    user = platform.register(username)
    status, stream, _ = platform.request("POST", "/api/streams",
                                         {"title": f"{username} live", "is_private": private},
                                         token=user["token"])
    assert status == 201
    return stream["id"], user["token"]


def ticket_for(platform: Platform, token: str) -> str:
    status, body, _ = platform.request("POST", "/api/ws/ticket", token=token)
    assert status == 200 and body["expires_in"] == 30
    return body["ticket"]  # type: ignore[no-any-return]


def test_viewers_on_two_nodes_are_summed_and_tabs_count_once(platform, tmp_path):
    stream_id, _ = prepared_stream(platform, "summed")
    other = platform.start_api_node(tmp_path / "other-media")

    # Node A's process 0 on its own port: tabs count once per process (docs/api.md), and through
    # nginx the second tab could land on the node's other process.
    process_0 = f"http://127.0.0.1:{platform.config.api_internal_port}"

    async def scenario() -> None:
        first = await connect(process_0, stream_id, origin=platform.base_url)  # node A
        await first.until(lambda v: v.viewers() == 1, what="the first total")
        remote = await connect(other["url"], stream_id, origin=platform.base_url)  # node B
        await first.until(lambda v: v.viewers() == 2, what="both nodes summed")
        await remote.until(lambda v: v.viewers() == 2, what="node B's view of the total")
        # A second tab of the first viewer (same viewer cookie) does not count again.
        tab = await connect(process_0, stream_id, origin=platform.base_url, cookie=first.cookie)
        await tab.until(lambda v: v.viewers() is not None, what="the tab's first total")
        await asyncio.sleep(2.5)
        assert first.viewers() == 2 and remote.viewers() == 2 and tab.viewers() == 2
        remote.close()
        await first.until(lambda v: v.viewers() == 1, what="a closed viewer to leave")
        tab.close()
        await asyncio.sleep(2)
        assert first.viewers() == 1  # the first tab is still open
        first.close()

    try:
        asyncio.run(scenario())
    finally:
        platform.stop_api_node(other)


def test_a_killed_node_stops_counting_and_a_stopped_one_says_goodbye(platform, tmp_path):
    stream_id, _ = prepared_stream(platform, "survivor")
    doomed = platform.start_api_node(tmp_path / "doomed-media")
    try:
        leaving = platform.start_api_node(tmp_path / "leaving-media")
    except BaseException:
        platform.stop_api_node(doomed)
        raise

    async def scenario() -> None:
        watcher = await connect(platform.base_url, stream_id)
        lost = [await connect(doomed["url"], stream_id, origin=platform.base_url)
                for _ in range(2)]
        await watcher.until(lambda v: v.viewers() == 3, what="three viewers")
        doomed["process"].send_signal(signal.SIGKILL)
        started = time.monotonic()
        await watcher.until(lambda v: v.viewers() == 1, timeout=20,
                            what="the dead node's viewers to expire")
        assert time.monotonic() - started < 15  # the heartbeat TTL is 10 s
        for viewer in lost:
            viewer.close()
        # A node that is stopped closes its sockets with 1001 (go elsewhere) and withdraws
        # its count at once rather than after the TTL.
        going = await connect(leaving["url"], stream_id, origin=platform.base_url)
        await watcher.until(lambda v: v.viewers() == 2, what="the leaving node's viewer")
        leaving["process"].send_signal(signal.SIGTERM)
        assert await going.until_closed() == CLOSE_GOING_AWAY
        started = time.monotonic()
        await watcher.until(lambda v: v.viewers() == 1, what="the stopped node's count to go")
        assert time.monotonic() - started < 5
        watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        platform.stop_api_node(doomed)
        platform.stop_api_node(leaving)


def test_private_streams_tickets_and_origins(platform):
    stream_id, owner_token = prepared_stream(platform, "hushed", private=True)
    guest = platform.register("hushguest")
    platform.request("PUT", "/api/stream/allowed-viewers/hushguest", token=owner_token)
    public_id, public_owner = prepared_stream(platform, "opening")
    tickets: list[str] = []

    async def scenario() -> None:
        anonymous = await connect(platform.base_url, stream_id)
        assert await anonymous.until_closed() == CLOSE_NOT_FOUND
        # An access token is never accepted in a URL: this is an anonymous viewer.
        sneaky = await connect(platform.base_url, stream_id, query=f"?access_token={owner_token}")
        assert await sneaky.until_closed() == CLOSE_NOT_FOUND
        tickets.append(ticket_for(platform, owner_token))
        owner = await connect(platform.base_url, stream_id, query=f"?ticket={tickets[-1]}")
        await owner.until(lambda v: v.viewers() == 1, what="the owner's total")
        replay = await connect(platform.base_url, stream_id, query=f"?ticket={tickets[-1]}")
        assert await replay.until_closed() == CLOSE_UNAUTHORIZED  # single use
        tickets.append(ticket_for(platform, guest["token"]))
        invited = await connect(platform.base_url, stream_id, query=f"?ticket={tickets[-1]}")
        await owner.until(lambda v: v.viewers() == 2, what="the invited viewer")
        # Withdrawing the invite closes the invited viewer's socket.
        platform.request("DELETE", "/api/stream/allowed-viewers/hushguest", token=owner_token)
        assert await invited.until_closed() == CLOSE_NOT_FOUND
        await owner.until(lambda v: v.viewers() == 1, what="the revoked viewer to leave")
        owner.close()
        # A public stream made private closes its anonymous viewers; the owner is told.
        tickets.append(ticket_for(platform, public_owner))
        watching = await connect(platform.base_url, public_id)
        keeper = await connect(platform.base_url, public_id, query=f"?ticket={tickets[-1]}")
        await keeper.until(lambda v: v.viewers() == 2, what="two viewers")
        platform.request("PUT", f"/api/streams/{public_id}", {"is_private": True,
                                                              "title": "now private"},
                         token=public_owner)
        assert await watching.until_closed() == CLOSE_NOT_FOUND
        await keeper.until(lambda v: any(m["type"] == "stream" and m["title"] == "now private"
                                         for m in v.messages), what="the stream message")
        keeper.close()
        # Cross-site WebSocket hijacking: a foreign Origin is refused at the handshake, and
        # so is another port or scheme of this host, or a look-alike.
        port = platform.config.http_port
        for origin in ("https://evil.example", "http://127.0.0.1:9999", "ftp://127.0.0.1",
                       f"http://evil.com@127.0.0.1:{port}", f"http://127.0.0.1:{port}.evil.com",
                       "null"):
            try:
                accepted = await connect(platform.base_url, public_id, origin=origin)
            except tornado.httpclient.HTTPClientError as refused:
                assert refused.code == 403, origin
            else:
                accepted.close()
                raise AssertionError(f"accepted Origin {origin}")
        # An unknown stream does not exist.
        ghost = await connect(platform.base_url, 999999999)
        assert await ghost.until_closed() == CLOSE_NOT_FOUND

    asyncio.run(scenario())
    logs = platform.logs()
    assert tickets and not any(ticket in logs for ticket in tickets)
    assert owner_token not in logs


def test_a_redis_restart_is_survived(base_config, tmp_path):
    """Redis restarted under a node: sockets keep getting this node's counts, the REST API
    answers with the last known totals (token checks say 503, not 500), each outage is logged
    once, and the counts are shared again when Redis is back."""
    port = reserve_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(redis_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_up(port), 10, what="redis-server")
        return process

    server = start_redis()
    # Its own database too: the module's platform (alive meanwhile, on another Redis) would
    # otherwise copy its own totals, 0, onto this node's live stream every second; once this
    # node's Redis is down, nothing wrote 1 back (failed 2 of 3 clean-clone runs).
    database = f"sf_redis_restart_{uuid.uuid4().hex[:8]}"
    database_url = asyncio.run(recreate_database(base_config.database_url, database))
    # One API process: while Redis is down each process can only count its own sockets.
    node = Platform(base_config, tmp_path / "node", SF_API_PROCESSES="1",
                    SF_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                    SF_DATABASE_URL=database_url).start()
    try:
        streamer = node.register("weathered")
        node.publish(streamer["key"])
        stream_id = wait_for(lambda: node.live_stream_of("weathered"), 20, what="live")["id"]

        async def scenario() -> None:
            nonlocal server
            first = await connect(node.base_url, stream_id)
            await first.until(lambda v: v.viewers() == 1, what="the first total")
            await asyncio.to_thread(
                wait_for, lambda: node.stream(stream_id)["viewers_count"] == 1, 10, 0.2,
                "viewers_count to follow the live total")
            # ... and PostgreSQL to hold it (the API may add the live total from Redis
            # before the periodic copy has written it).
            database = await asyncpg.connect(node.config.database_url)
            try:
                for _ in range(300):  # the periodic copy; slower when the suite loads the CPUs
                    if await database.fetchval("SELECT viewers_count FROM streams WHERE id = $1",
                                               stream_id) == 1:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("PostgreSQL never got the live total")
            finally:
                await database.close()
            server.send_signal(signal.SIGKILL)
            server.wait()
            # REST: public reads answer from PostgreSQL with the last known totals.
            assert node.stream(stream_id)["viewers_count"] == 1
            status, listing, _ = node.request("GET", "/api/streams")
            assert status == 200
            assert [s["viewers_count"] for s in listing["data"] if s["id"] == stream_id] == [1]
            status, body, headers = node.request("GET", "/api/users/profile",
                                                 token=streamer["token"])
            assert status == 503 and body["error"]["code"] == "internal_error"
            assert headers["Retry-After"] == "5"
            # WebSockets: a new viewer joins without Redis and everyone gets local counts.
            second = await connect(node.base_url, stream_id)
            await first.until(lambda v: v.viewers() == 2, what="local counts while Redis is down")
            await asyncio.sleep(2)
            server = start_redis()  # empty: every count must be written again
            with redis.Redis(port=port) as client:
                await asyncio.to_thread(
                    wait_for, lambda: client.hlen(HOLDERS_KEY.format(stream_id)) == 2,
                    15, 0.2, "the counts written again")
            second.close()
            await first.until(lambda v: v.viewers() == 1, what="counting after the restart")
            first.close()

        asyncio.run(scenario())
        log_lines = node.api_log.read_text().splitlines()
        for logger in ("sf.viewers", "sf.cache", "sf.ratelimit"):
            lost = [line for line in log_lines
                    if f'"{logger}"' in line and "unreachable" in line]
            assert len(lost) == 1, (logger, lost)
        assert not [line for line in log_lines if '"status": 500' in line]
    finally:
        node.stop()
        server.kill()
        asyncio.run(drop_database(base_config.database_url, database))
        server.wait()



def test_ticket_needs_a_signed_in_user(platform):
    status, body, _ = platform.request("POST", "/api/ws/ticket")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_control_frame_floods_are_dropped(platform):
    """security.md#websocket-control-frame-flood: pings and pongs were never counted, and eight
    sockets sending them kept the API node's loop busy."""
    stream_id, _ = prepared_stream(platform, "pinged")

    async def scenario() -> None:
        viewer = await connect(platform.base_url, stream_id)
        await viewer.until(lambda v: v.viewers() == 1, what="the first total")
        for _ in range(40):
            viewer.connection.ping(b"x" * 100)
        assert await viewer.until_closed() == 1008

    asyncio.run(scenario())


def test_ending_a_session_ends_its_websocket_access(platform):
    """Logout or a password change elsewhere ends the session's tickets and closes (4401) the
    sockets it opened, within the hub's session check: a stolen session must not keep a
    private stream's messages (signed thumbnails) after the owner locks it out."""
    stream_id, owner_token = prepared_stream(platform, "lockout", private=True)
    guest = platform.register("lockguest")
    platform.request("PUT", "/api/stream/allowed-viewers/lockguest", token=owner_token)
    status, second, _ = platform.request("POST", "/api/auth/login",
                                         {"username": "lockguest", "password": "password123"})
    assert status == 200

    async def scenario() -> None:
        unused = ticket_for(platform, guest["token"])
        watching = await connect(platform.base_url, stream_id,
                                 query=f"?ticket={ticket_for(platform, guest['token'])}")
        await watching.until(lambda v: v.viewers() is not None, what="the first total")
        other = await connect(platform.base_url, stream_id,
                              query=f"?ticket={ticket_for(platform, second['access_token'])}")
        await other.until(lambda v: v.viewers() is not None, what="the second session's total")
        assert platform.request("POST", "/api/auth/logout", token=guest["token"])[0] == 204
        started = time.monotonic()
        assert await watching.until_closed(timeout=10) == CLOSE_UNAUTHORIZED
        assert time.monotonic() - started < 7  # SESSION_CHECK_EVERY is 5 s
        late = await connect(platform.base_url, stream_id, query=f"?ticket={unused}")
        assert await late.until_closed() == CLOSE_UNAUTHORIZED  # tickets die with the session
        assert other.close_code is None  # the other session is still signed in
        # A password change from a third session revokes every other one, the second included.
        status, third, _ = platform.request("POST", "/api/auth/login",
                                            {"username": "lockguest", "password": "password123"})
        assert status == 200
        changed = platform.request("POST", "/api/users/change-password",
                                   {"current_password": "password123",
                                    "new_password": "newpassword456"},
                                   token=third["access_token"])
        assert changed[0] == 204
        assert await other.until_closed(timeout=10) == CLOSE_UNAUTHORIZED

    asyncio.run(scenario())
