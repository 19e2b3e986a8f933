"""Exact viewer counts that cannot be inflated (issue 19, point 5), for real: a node of two API
processes behind nginx, a second node sharing PostgreSQL and Redis, real WebSocket clients,
processes and nodes killed under them, and an attacker's moves (forged `sf_vid`
cookies, many sockets from one address and one network, a handshake flood, short visits).

Sockets go straight to an API process's own port: from 127.0.0.1 (a trusted proxy) a test
can pose as any client address with X-Forwarded-For, as the public nginx would pass it on.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest
import tornado.httpclient
import tornado.websocket

from harness.client import Viewer
from harness.platform import Platform, wait_for
from sf.services.viewer_counts import ALIVE_KEY, LEAVES, SIGNED_IN, ViewerCounts
from tests.helpers import run_private
from tests.test_viewers import prepared_stream, ticket_for

DWELL = 6  # seconds (SF_VIEWER_MIN_DWELL_SECONDS of this module's node)
CAP = 4    # SF_VIEWERS_ANONYMOUS_PER_NETWORK's default
HANDSHAKES_PER_MINUTE = 120  # SF_WS_HANDSHAKES_PER_MINUTE's default


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("exact-counts"),
                    SF_RATE_LIMIT_ANONYMOUS="100000", SF_RATE_LIMIT_USER="100000",
                    SF_VIEWER_MIN_DWELL_SECONDS=str(DWELL)).start()
    yield node
    node.stop()


def process_url(platform: Platform, index: int) -> str:
    """API process `index` of the node, on its own port (not through the kernel's choice)."""
    return f"http://127.0.0.1:{platform.config.api_internal_port + index}"


async def watch(platform: Platform, base: str, stream_id: int, *, address: str | None = None,
                cookie: str = "", ticket: str | None = None) -> Viewer:
    """A viewer socket on `base`, from client `address` (X-Forwarded-For), with a cookie."""
    headers = {"Origin": platform.base_url}
    if address:
        headers["X-Forwarded-For"] = address
    if cookie:
        headers["Cookie"] = cookie
    query = f"?ticket={ticket}" if ticket else ""
    url = base.replace("http://", "ws://") + f"/ws/streams/{stream_id}/viewers{query}"
    request = tornado.httpclient.HTTPRequest(url, headers=headers, request_timeout=10)
    return Viewer(await tornado.websocket.websocket_connect(request))


def set_cookie(viewer: Viewer) -> str | None:
    """The value of the `sf_vid` cookie the handshake set, if it set one."""
    header = viewer.connection.headers.get("Set-Cookie", "")
    if not header.startswith("sf_vid="):
        return None
    return header.split(";")[0].removeprefix("sf_vid=")


def mark_live(platform: Platform, stream_id: int) -> None:
    """The prepared stream goes live (as on_publish marks it; no encoder needed here)."""
    async def update() -> None:
        connection = await asyncpg.connect(platform.config.database_url)
        try:
            await connection.execute(
                "UPDATE streams SET is_live = true, started_at = now() WHERE id = $1", stream_id)
        finally:
            await connection.close()

    run_private(update())


def statistics(platform: Platform, stream_id: int, token: str) -> dict[str, Any]:
    status, body, _ = platform.request("GET", f"/api/streams/{stream_id}/statistics",
                                       token=token)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return sorted(int(child) for child in result.stdout.split())


async def everyone_sees(viewers: list[Viewer], total: int, timeout: float = 15,
                        what: str = "the total") -> None:
    for viewer in viewers:
        await viewer.until(lambda v: v.viewers() == total, timeout=timeout,
                           what=f"{what} ({total})")


@pytest.mark.platform
def test_a_viewer_on_two_processes_counts_once(platform):
    """Two tabs of one signed-in viewer, and of one anonymous viewer, each on both processes."""
    stream_id, _ = prepared_stream(platform, "twotabs")
    fan = platform.register("twotabsfan")

    async def scenario() -> None:
        on_0 = await watch(platform, process_url(platform, 0), stream_id,
                           ticket=ticket_for(platform, fan["token"]))
        on_1 = await watch(platform, process_url(platform, 1), stream_id,
                           ticket=ticket_for(platform, fan["token"]))
        await everyone_sees([on_0, on_1], 1, what="one signed-in viewer")
        anonymous_0 = await watch(platform, process_url(platform, 0), stream_id,
                                  address="198.51.100.10")
        cookie = set_cookie(anonymous_0)
        assert cookie
        # The same anonymous viewer's second tab, even from another network: kept, once.
        anonymous_1 = await watch(platform, process_url(platform, 1), stream_id,
                                  address="203.0.113.20", cookie=f"sf_vid={cookie}")
        assert set_cookie(anonymous_1) is None
        viewers = [on_0, on_1, anonymous_0, anonymous_1]
        await everyone_sees(viewers, 2, what="two viewers")
        await asyncio.sleep(2.5)  # several recounts later
        assert [viewer.viewers() for viewer in viewers] == [2, 2, 2, 2]
        on_0.close()
        anonymous_1.close()
        await asyncio.sleep(2.5)  # each still has a tab on the other process
        assert on_1.viewers() == 2 and anonymous_0.viewers() == 2
        on_1.close()
        await anonymous_0.until(lambda v: v.viewers() == 1, what="the signed-in viewer gone")
        anonymous_0.close()

    asyncio.run(scenario())


@pytest.mark.platform
def test_a_viewer_on_two_nodes_counts_once_and_a_killed_node_stops_counting(platform, tmp_path):
    stream_id, _ = prepared_stream(platform, "twonodes")
    fan = platform.register("twonodesfan")
    other = platform.start_api_node(tmp_path / "other-media")

    async def scenario() -> None:
        here = await watch(platform, process_url(platform, 0), stream_id,
                           ticket=ticket_for(platform, fan["token"]))
        there = await watch(platform, other["url"], stream_id,
                            ticket=ticket_for(platform, fan["token"]))
        await everyone_sees([here, there], 1, what="one viewer on two nodes")
        await asyncio.sleep(2.5)
        assert here.viewers() == 1 and there.viewers() == 1
        only_there = await watch(platform, other["url"], stream_id, address="192.0.2.77")
        await everyone_sees([here, there, only_there], 2, what="a second viewer")
        other["process"].send_signal(signal.SIGKILL)
        started = time.monotonic()
        # The dead node's own viewer stops counting; the one also watching here still counts.
        await here.until(lambda v: v.viewers() == 1, timeout=20,
                         what="the dead node's viewer to expire")
        assert time.monotonic() - started < 13  # the heartbeat is 10 s
        await asyncio.sleep(2.5)
        assert here.viewers() == 1
        here.close()

    try:
        asyncio.run(scenario())
    finally:
        platform.stop_api_node(other)


@pytest.mark.platform
def test_a_killed_process_stops_counting_and_its_successor_inherits_nothing(platform):
    stream_id, _ = prepared_stream(platform, "killedproc")

    async def scenario() -> None:
        stays = await watch(platform, process_url(platform, 0), stream_id, address="192.0.2.1")
        doomed = [await watch(platform, process_url(platform, 1), stream_id,
                              address=f"192.0.2.{index}") for index in (2, 3)]
        await everyone_sees([stays, *doomed], 3, what="three viewers")
        process_1 = children_of(platform.api_process.pid)[1]  # process 0 was started first
        os.kill(process_1, signal.SIGKILL)
        started = time.monotonic()
        await stays.until(lambda v: v.viewers() == 1, timeout=20,
                          what="the killed process's viewers to expire")
        assert time.monotonic() - started < 13
        # The supervisor restarts process 1 under the same node id: it starts from nothing.
        await asyncio.to_thread(
            wait_for, lambda: platform.request_node({"url": process_url(platform, 1)}, "GET",
                                                    "/readyz")[0] == 200, 30, 0.2,
            "process 1 back")
        await asyncio.sleep(3)
        assert stays.viewers() == 1
        again = await watch(platform, process_url(platform, 1), stream_id, address="192.0.2.4")
        await everyone_sees([stays, again], 2, what="a viewer on the new process 1")
        again.close()
        stays.close()

    asyncio.run(scenario())


@pytest.mark.platform
def test_peak_viewers_is_the_highest_total_published(platform):
    """Two viewers for about 3 s between two samples: every viewer and the stream showed 2,
    so the statistics say 2 (the samples alone saw 0 both times)."""
    stream_id, owner = prepared_stream(platform, "peaky")
    mark_live(platform, stream_id)
    # Right after a sample, the next one is SF_STATS_SAMPLE_SECONDS (10 s) away.
    wait_for(lambda: statistics(platform, stream_id, owner)["timeline"], 25,
             what="the first sample")

    async def scenario() -> None:
        first = await watch(platform, process_url(platform, 0), stream_id, address="198.51.100.1")
        second = await watch(platform, process_url(platform, 1), stream_id, address="203.0.113.1")
        await everyone_sees([first, second], 2, what="two viewers")
        shown = await asyncio.to_thread(
            wait_for, lambda: platform.stream(stream_id)["viewers_count"] == 2, 6, 0.2,
            "GET /api/streams/{id} to show 2")
        assert shown
        first.close()
        second.close()

    asyncio.run(scenario())
    assert len(statistics(platform, stream_id, owner)["timeline"]) == 1  # no sample meanwhile
    body = wait_for(lambda: (lambda b: b if b["peak_viewers"] else None)(
        statistics(platform, stream_id, owner)), 25, what="the peak to be recorded")
    assert body["peak_viewers"] == 2
    assert all(point["viewers"] == 0 for point in body["timeline"])


@pytest.mark.platform
def test_forged_viewer_cookies_are_replaced_and_do_not_inflate(platform):
    """security.md#forged-viewer-cookie."""
    stream_id, _ = prepared_stream(platform, "forged")
    # What the attack sent: a new value matching the old pattern on every socket.
    forged = [secrets.token_urlsafe(16) for _ in range(12)]

    async def scenario() -> None:
        viewers = [await watch(platform, process_url(platform, index % 2), stream_id,
                               address="198.18.7.9", cookie=f"sf_vid={value}")
                   for index, value in enumerate(forged)]
        issued = [set_cookie(viewer) for viewer in viewers]
        assert all(value and value not in forged for value in issued), issued
        assert len(set(issued)) == len(forged)  # each a new anonymous viewer
        await everyone_sees(viewers, CAP, what="the anonymous viewers of one address")
        await asyncio.sleep(2.5)
        assert {viewer.viewers() for viewer in viewers} == {CAP}
        assert all(viewer.close_code is None for viewer in viewers)  # connected, uncounted
        # A signed id altered by one character is no id either.
        value = issued[0]
        assert value is not None
        altered = value[:-1] + ("A" if value[-1] != "A" else "B")
        tampered = await watch(platform, process_url(platform, 0), stream_id,
                               address="100.64.3.3", cookie=f"sf_vid={altered}")
        assert set_cookie(tampered) not in (None, altered, value)
        for viewer in [*viewers, tampered]:
            viewer.close()

    asyncio.run(scenario())


@pytest.mark.platform
def test_anonymous_viewers_count_at_most_the_cap_per_network(platform):
    """security.md#viewer-inflation-from-one-network."""
    stream_id, _ = prepared_stream(platform, "capped")
    mark_live(platform, stream_id)  # so that the stream's own count follows too
    fans = [platform.register(f"cappedfan{index}") for index in range(3)]

    async def scenario() -> None:
        async def crowd(addresses: list[str]) -> list[Viewer]:
            return [await watch(platform, process_url(platform, index % 2), stream_id,
                                address=address) for index, address in enumerate(addresses)]

        one_address = await crowd(["198.51.100.7"] * 50)
        await everyone_sees(one_address[:1], CAP, what="50 sockets of one address")
        one_network = await crowd([f"203.0.113.{index}" for index in range(1, 21)])
        ipv6 = await crowd([f"2001:db8:1:2::{index:x}" for index in range(1, 9)])
        networks = await crowd([f"192.0.{index}.1" for index in range(10, 16)])
        signed_in = [await watch(platform, process_url(platform, index % 2), stream_id,
                                 address="198.51.100.7",
                                 ticket=ticket_for(platform, fan["token"]))
                     for index, fan in enumerate(fans)]
        everyone = [*one_address, *one_network, *ipv6, *networks, *signed_in]
        # One address: 4; one /24: 4; one /64: 4; six /24s: 6; accounts always: 3.
        await everyone_sees([one_address[0], one_network[0], ipv6[0], signed_in[0]],
                            CAP * 3 + 6 + 3, what="the capped total")
        await asyncio.sleep(2.5)
        assert {viewer.viewers() for viewer in everyone} == {21}
        assert all(viewer.close_code is None for viewer in everyone)
        await asyncio.to_thread(
            wait_for, lambda: platform.stream(stream_id)["viewers_count"] == 21, 10, 0.2,
            "GET /api/streams/{id} to show the capped total")
        # Those who leave free their places for the uncounted ones still there.
        for viewer in one_address[3:]:
            viewer.close()
        await everyone_sees([one_network[0]], 21 - CAP + 3, what="freed places taken")
        for viewer in everyone:
            viewer.close()

    asyncio.run(scenario())


@pytest.mark.platform
def test_a_handshake_flood_from_one_address_is_refused(platform):
    """security.md#websocket-handshake-flood, across the API processes."""
    stream_id, _ = prepared_stream(platform, "flooded")

    async def scenario() -> None:
        refused: Counter[int] = Counter()
        accepted = 0
        for index in range(2 * HANDSHAKES_PER_MINUTE + 60):  # two windows at most, and more
            try:
                viewer = await watch(platform, process_url(platform, index % 2), stream_id,
                                     address="192.0.2.200")
            except tornado.httpclient.HTTPClientError as error:
                refused[error.code] += 1
                assert error.response is not None
                assert json.loads(error.response.body)["error"]["code"] == "rate_limited"
                assert 1 <= int(error.response.headers["Retry-After"]) <= 61
            else:
                accepted += 1
                viewer.close()
        assert set(refused) == {429} and refused[429] >= 60, refused
        assert accepted <= 2 * HANDSHAKES_PER_MINUTE
        # Another address is not held up by it.
        bystander = await watch(platform, process_url(platform, 0), stream_id,
                                address="192.0.2.201")
        await bystander.until(lambda v: v.viewers() == 1, what="the bystander counted")
        bystander.close()

    asyncio.run(scenario())


@pytest.mark.platform
def test_short_visits_add_nothing_to_unique_viewers_or_watch_time(platform):
    """security.md#drive-by-viewers."""
    stream_id, owner = prepared_stream(platform, "dwelled")
    mark_live(platform, stream_id)
    wait_for(lambda: statistics(platform, stream_id, owner)["timeline"], 25,
             what="the first sample")

    async def scenario() -> None:
        # Waves of ten visitors from ten networks, each staying less than the dwell, for
        # longer than the sample interval: at least one sample finds ten of them watching.
        previous: list[Viewer] = []
        opened: dict[Viewer, float] = {}
        stays: list[float] = []
        started = time.monotonic()
        wave = 0
        while time.monotonic() - started < 12:
            current = []
            for index in range(10):
                current.append(await watch(platform, process_url(platform, index % 2),
                                           stream_id, address=f"10.{wave}.{index}.1"))
                opened[current[-1]] = time.monotonic()
            for viewer in previous:
                viewer.close()
                stays.append(time.monotonic() - opened[viewer])
            await current[0].until(lambda v: v.viewers() == 10, what="ten visitors shown")
            await asyncio.sleep(1.0)
            previous, wave = current, wave + 1
        for viewer in previous:
            viewer.close()
            stays.append(time.monotonic() - opened[viewer])
        assert max(stays) < DWELL - 0.5, stays  # the premise: every visit was short
        # One viewer stays past the dwell.
        stayed = await watch(platform, process_url(platform, 0), stream_id, address="10.99.0.1")
        await asyncio.sleep(DWELL + 3)
        stayed.close()

    asyncio.run(scenario())
    samples = len(statistics(platform, stream_id, owner)["timeline"])
    assert samples >= 2
    body = wait_for(lambda: (lambda b: b if len(b["timeline"]) > samples else None)(
        statistics(platform, stream_id, owner)), 25, what="a sample after the visits")
    assert any(point["viewers"] >= 10 for point in body["timeline"])  # shown, immediately
    assert body["unique_viewers"] == 1
    assert body["watch_time_seconds"] <= 2 * 10 + DWELL  # the one who stayed, at most


@pytest.mark.gen_test(timeout=30)
async def test_a_process_that_lost_its_place_in_redis_counts_again(services):
    """A process whose heartbeat lapsed (stalled past it, or Redis restarted empty) is told so
    and starts over as a new instance; a viewer it held all along keeps their first join."""
    redis = services.redis

    def process(node_id: str) -> ViewerCounts:
        return ViewerCounts(redis, node_id, anonymous_per_network=2, min_dwell_seconds=0)

    stalled, other = process("node-a.0"), process("node-b.0")
    stream = 7
    joined = {"u1": SIGNED_IN, "aX": "192.0.2.0/24", "aY": "192.0.2.0/24", "aZ": "192.0.2.0/24"}
    first = await stalled.flush({stream: joined}, {stream: True}, fresh=True)
    assert first.refused == {stream: ["aZ"]}  # the network's two places are taken
    assert first.totals[stream].viewers == 3
    await other.flush({stream: {"u1": SIGNED_IN}}, {}, fresh=True)  # a tab elsewhere
    u1_since = await redis.zscore(f"sf:vc:{stream}:since", "u1")

    await redis.delete(ALIVE_KEY.format(stalled.instance))   # the heartbeat lapses
    assert (await other.totals([stream]))[stream].viewers == 1  # reaped: u1 is still there
    assert (await stalled.flush({stream: {"aY": LEAVES}}, {})).lost

    # Starting over: everything it holds, as a new instance, the old one dropped.
    old = stalled.new_incarnation()
    again = await stalled.flush({stream: {"u1": SIGNED_IN, "aX": "192.0.2.0/24"}},
                                {stream: True}, fresh=True, retired=[old])
    assert not again.lost and again.totals[stream].viewers == 2
    assert await redis.zscore(f"sf:vc:{stream}:since", "u1") == u1_since  # never left
    # Starting over while the old instance still counts (a call whose outcome is unknown):
    # nobody it still holds leaves, not even for a moment, so their dwell goes on.
    ax_since = await redis.zscore(f"sf:vc:{stream}:since", "aX")
    old = stalled.new_incarnation()
    again = await stalled.flush({stream: {"u1": SIGNED_IN, "aX": "192.0.2.0/24"}},
                                {stream: True}, fresh=True, retired=[old])
    assert again.totals[stream].viewers == 2
    assert await redis.zscore(f"sf:vc:{stream}:since", "aX") == ax_since
    assert await redis.scard(f"sf:vc:{stream}:procs") == 2  # the old instance is gone
    # A stop withdraws at once; the other process's tab of u1 still counts.
    await stalled.withdraw([stalled.instance])
    total = (await other.totals([stream]))[stream]
    assert (total.viewers, total.peak) == (1, 3)
