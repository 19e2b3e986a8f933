"""Live chat across real API processes: a node (`sf serve`) and a second API node, each its
own process, sharing PostgreSQL and Redis. Senders on different processes, readers on both
see one order; `/live` counts as a viewer like `/viewers`; a ban stops its user on the other
process at once; a new ticket or socket does not evade it."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from harness.client import Viewer, connect
from harness.platform import Platform

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("chat-node"),
                    SF_RATE_LIMIT_ANONYMOUS="100000", SF_RATE_LIMIT_USER="100000").start()
    yield node
    node.stop()


def ticket_query(platform: Platform, token: str) -> str:
    status, body, _ = platform.request("POST", "/api/ws/ticket", token=token)
    assert status == 200
    return f"?ticket={body['ticket']}"


async def live(platform: Platform, base: str, stream_id: int, token: str | None = None) -> Viewer:
    query = ticket_query(platform, token) if token else ""
    viewer = await connect(base, stream_id, origin=platform.base_url, query=query, socket="live")
    await viewer.until(lambda v: v.of_type("chat.settings"), what="the chat settings")
    return viewer


def test_two_processes_one_order_one_viewer_count_and_bans_everywhere(platform, tmp_path):
    """security.md#chat-impersonation: the sender is the ticket's, on any process."""
    owner = platform.register("chathost")
    status, stream, _ = platform.request("POST", "/api/streams", {"title": "talk"},
                                         token=owner["token"])
    assert status == 201
    stream_id = stream["id"]
    # Names of this module's own: platform tests share one database, and the fast tier's
    # tests (which run before, and clear it when they start, not when they end) leave
    # their alice and bob in it.
    alice, bob = platform.register("nodes_alice"), platform.register("nodes_bob")
    other = platform.start_api_node(tmp_path / "other-media")
    process_0 = f"http://127.0.0.1:{platform.config.api_internal_port}"

    async def scenario() -> None:
        alice_socket = await live(platform, process_0, stream_id, alice["token"])
        bob_socket = await live(platform, other["url"], stream_id, bob["token"])
        # Counted as viewers exactly like /viewers: two signed-in /live viewers and this one.
        counter = await connect(process_0, stream_id, origin=platform.base_url)
        await counter.until(lambda v: v.viewers() == 3, what="the /live sockets counted")
        reader_0 = await live(platform, process_0, stream_id)
        reader_1 = await live(platform, other["url"], stream_id)

        async def chatter(socket: Viewer, name: str) -> None:
            for number in range(15):
                assert (await socket.say(f"{name} {number}"))["type"] == "chat.ack"

        await asyncio.gather(chatter(alice_socket, "alice"), chatter(bob_socket, "bob"))
        readers = (reader_0, reader_1, alice_socket, bob_socket)
        for reader in readers:
            await reader.until(lambda v: len(v.chat()) == 30, what="all 30 messages")
        orders = [[m["text"] for m in reader.chat()] for reader in readers]
        assert orders[0] == orders[1] == orders[2] == orders[3]
        assert {m["user"]["username"] for m in reader_0.chat()} == {"nodes_alice", "nodes_bob"}

        # Banned through the database on one side: refused on the other process at once, on
        # the socket it has and on a new one with a new ticket.
        connection = await asyncpg.connect(platform.config.database_url)
        try:
            await connection.execute(
                "INSERT INTO chat_bans (channel_id, user_id) VALUES ($1, $2)",
                owner["user"]["id"], bob["user"]["id"])
        finally:
            await connection.close()
        assert (await bob_socket.say("still here?"))["code"] == "banned"
        again = await live(platform, process_0, stream_id, bob["token"])
        assert (await again.say("new socket"))["code"] == "banned"

        # Through REST on process 0, in force on the other process within 1 s (goal 2): a
        # timeout stops alice's socket there and hides her messages from its readers; a
        # settings change reaches its sockets.
        alice_there = await live(platform, other["url"], stream_id, alice["token"])
        on_0 = {"url": process_0}
        status, _, _ = await asyncio.to_thread(
            platform.request_node, on_0, "PUT", "/api/channel/bans/nodes_alice",
            {"duration_seconds": 600, "reason": "cool off"}, owner["token"])
        assert status == 200
        answered = time.monotonic()
        assert (await alice_there.say("still here?"))["code"] == "timed_out"
        await reader_1.until(lambda v: {"type": "chat.user_cleared", "user_id": alice["user"]["id"]}
                             in v.items, 1.0, "alice's messages hidden on the other process")
        assert time.monotonic() - answered <= 1.0
        status, _, _ = await asyncio.to_thread(
            platform.request_node, on_0, "PUT", "/api/channel/chat/settings",
            {"enabled": False}, owner["token"])
        assert status == 200
        await reader_1.until(lambda v: v.of_type("chat.settings")[-1]["enabled"] is False, 1.0,
                             "chat turned off on the other process")
        for socket in (*readers, counter, again, alice_there):
            socket.close()

    try:
        asyncio.run(scenario())
    finally:
        platform.stop_api_node(other)
