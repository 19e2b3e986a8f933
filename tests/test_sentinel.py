"""A Redis primary SIGKILLed under a running platform whose SF_REDIS_URL names a Sentinel group
(a primary, a replica and three redis-sentinel processes: harness/sentinel.py): steady
signed-in and anonymous traffic through nginx, viewer sockets on both API processes, stream
events, a logout just before the kill. The sentinels fail over; the platform follows without a
restart."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from harness.client import connect
from harness.platform import Platform, wait_for
from harness.sentinel import SentinelGroup
from sf.db.migrate import drop_database, recreate_database

pytestmark = pytest.mark.platform

RATE = 20  # requests a second, alternately signed-in and anonymous
RECOVERY_LIMIT = 10.0  # seconds from the kill until signed-in requests are answered again


class Traffic:
    """Requests through the platform's public port on an open schedule, in a thread:
    (monotonic time, "signed-in" or "anonymous", status)."""

    def __init__(self, node: Platform, token: str) -> None:
        self.node, self.token = node, token
        self.samples: list[tuple[float, str, int]] = []
        self.durations: list[tuple[float, str, float]] = []  # (start, kind, seconds)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        due, signed_in = time.monotonic(), True
        while self.running:
            start = time.monotonic()
            if signed_in:
                status, _, _ = self.node.request("GET", "/api/users/profile", token=self.token)
            else:
                status, _, _ = self.node.request("GET", "/api/streams")
            kind = "signed-in" if signed_in else "anonymous"
            self.samples.append((time.monotonic(), kind, status))
            self.durations.append((start, kind, time.monotonic() - start))
            signed_in = not signed_in
            due += 1 / RATE
            time.sleep(max(0.0, due - time.monotonic()))

    def failures(self, kind: str) -> list[tuple[float, str, int]]:
        return [s for s in self.samples if s[1] == kind and s[2] != 200]

    def answered_since(self, moment: float, seconds: float) -> bool:
        """Every signed-in request of the last `seconds` (all after `moment`) answered 200."""
        recent = [s for s in self.samples if s[1] == "signed-in" and s[0] >= moment]
        if not recent or recent[-1][0] - recent[0][0] < seconds:
            return False
        tail = [s for s in recent if s[0] >= recent[-1][0] - seconds]
        return all(s[2] == 200 for s in tail)


def rate_count(group: SentinelGroup, port: int, user_id: int) -> int:
    """The signed-in user's request count in the current rate-limit window, on one server."""
    with group.client(port) as client:
        keys = client.keys(f"sf:rl:api:u{user_id}:*")
        return max((int(client.get(key) or 0) for key in keys), default=0)


def sf_clients(group: SentinelGroup, port: int) -> list[str]:
    """Connections to a server other than the sentinels' and this one's."""
    with group.client(port) as client:
        listed = [*client.client_list(_type="normal"), *client.client_list(_type="pubsub")]
    return [entry["addr"] for entry in listed
            if not entry.get("name", "").startswith("sentinel")
            and not entry.get("cmd", "").startswith("client")]


def test_the_platform_follows_a_sentinel_failover(base_config, tmp_path):
    group = SentinelGroup(tmp_path / "redis").start()
    database = f"sf_sentinel_{uuid.uuid4().hex[:8]}"
    database_url = asyncio.run(recreate_database(base_config.database_url, database))
    node = None
    try:
        node = Platform(base_config, tmp_path / "node", SF_REDIS_URL=group.url(0),
                        SF_DATABASE_URL=database_url).start()
        streamer, _, stream = node.go_live("failover_streamer")
        stream_id = stream["id"]
        reader = node.register("failover_reader")
        leaver = node.register("failover_leaver")
        processes = [f"http://127.0.0.1:{node.config.api_internal_port + index}"
                     for index in range(2)]
        traffic = Traffic(node, reader["token"])

        async def scenario() -> None:
            # One viewer on each API process: counts and events cross them through Redis.
            first = await connect(processes[0], stream_id, origin=node.base_url)
            second = await connect(processes[1], stream_id, origin=node.base_url)
            for viewer in (first, second):
                await viewer.until(lambda v: v.viewers() == 2, 20, "both viewers counted")
            traffic.thread.start()
            await asyncio.sleep(3)

            old = group.primary()
            before = rate_count(group, old, reader["user"]["id"])
            assert before > 0
            # Logged out just before the primary dies: the answer waited for the replica.
            status, _, _ = node.request("POST", "/api/auth/logout", token=leaver["token"])
            assert status == 204
            killed = time.monotonic()
            group.kill_primary()
            new, failover = await asyncio.to_thread(group.wait_failover, old)

            # Signed-in requests are answered again, steadily, well within the limit.
            await asyncio.to_thread(
                wait_for, lambda: traffic.answered_since(killed, 3.0), 30, 0.2,
                "signed-in requests answered again")
            failed = traffic.failures("signed-in")
            recovered = (failed[-1][0] - killed) if failed else 0.0
            window = (failed[-1][0] - failed[0][0]) if failed else 0.0
            slowest = max(seconds for start, kind, seconds in traffic.durations
                          if kind == "signed-in" and start >= killed)
            print(f"\nfailover (sentinels) {failover:.1f} s; {len(failed)} signed-in requests "
                  f"failed over {window:.1f} s, the last {recovered:.1f} s after the kill; "
                  f"the slowest answered in {slowest:.1f} s; "
                  f"{len(traffic.failures('anonymous'))} anonymous failed")
            assert recovered < RECOVERY_LIMIT
            if failover < node.config.redis_outage_wait_seconds - 1:
                # A failover shorter than the gate's ride-through costs latency, not errors.
                assert failed == [], failed
            assert {status for _, _, status in failed} <= {503}  # never 500, never 401
            assert traffic.failures("anonymous") == []  # public reads do not need Redis

            # Nothing silently lost or reset: the logout holds, the rate-limit count went on
            # from where it was, and the reader's session (created long before) still works.
            status, body, _ = node.request("GET", "/api/users/profile", token=leaver["token"])
            assert status == 401, body
            assert rate_count(group, new, reader["user"]["id"]) > before

            # Viewer counts and stream events flow again across both processes.
            third = await connect(node.base_url, stream_id)
            for viewer in (first, second, third):
                await viewer.until(lambda v: v.viewers() == 3, 20, "counts after the failover")
            status, _, _ = node.request("PUT", f"/api/streams/{stream_id}",
                                        {"title": "after the failover"}, token=streamer["token"])
            assert status == 200
            for viewer in (first, second):
                await viewer.until(
                    lambda v: any(item.get("title") == "after the failover"
                                  for item in v.of_type("stream")), 10,
                    "the stream event on both processes")
            third.close()
            await first.until(lambda v: v.viewers() == 2, 20, "a viewer leaving, counted")

            # The old primary comes back as a replica; nothing of SF's is connected to it.
            await asyncio.to_thread(group.restart, old)
            await asyncio.sleep(2)
            assert sf_clients(group, old) == []
            assert sf_clients(group, new) != []
            assert traffic.answered_since(killed, 3.0)
            for viewer in (first, second):
                assert viewer.close_code is None  # the sockets lived through it
                viewer.close()

        try:
            asyncio.run(scenario())
        finally:
            traffic.running = False
            if traffic.thread.is_alive():
                traffic.thread.join(5)
        log_text = node.api_log.read_text()
        assert "Redis primary moved" in log_text
        assert "unhandled error" not in log_text
        assert "reached no replica" not in log_text
    finally:
        if node is not None:
            node.stop()
        group.stop()
        asyncio.run(drop_database(base_config.database_url, database))
