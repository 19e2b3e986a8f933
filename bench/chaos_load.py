"""bench/chaos.py's load: a request loop, viewer WebSockets and an HLS watch on an asyncio loop
in a thread of its own, every outcome recorded with its time."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tornado.httpclient  # noqa: E402
import tornado.websocket  # noqa: E402

from bench.chaos_stack import HTTP_PORT, media_playlist  # noqa: E402
from harness.client import Connection  # noqa: E402

REQUEST_TIMEOUT = 10.0
# (kind, weight, expected status)
MIX = [("streams", 25, 200), ("categories", 10, 200), ("user", 15, 200), ("profile", 25, 200),
       ("write", 25, 204)]
EXPECTED = {kind: status for kind, _, status in MIX} | {"follow": 204, "unfollow": 204}


@dataclass
class Sample:
    due: float          # time.time() the request was due
    latency: float
    kind: str
    status: int         # 599: no answer (connection error or timeout)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == EXPECTED[self.kind]


@dataclass
class Users:
    streamer: dict[str, Any]
    followers: list[dict[str, Any]]
    targets: list[dict[str, Any]]


class Load:
    """Request loop, viewer WebSockets and an HLS watch; every outcome recorded with its time."""

    def __init__(self, users: Users, rate: float, viewers: int) -> None:
        self.users, self.rate, self.viewer_count = users, rate, viewers
        self.samples: list[Sample] = []
        self.stream_id = 0
        self.variant = ""              # the media playlist watched, relative to /hls/<id>/
        self.hls: list[tuple[float, int, str]] = []   # (time, sequence, last segment) changes
        self.hls_errors: Counter[int] = Counter()
        self.open_viewers = 0
        self.viewer_events: list[tuple[float, int, str]] = []  # (time, viewer, what)
        self.viewer_messages = 0
        # follow state of (follower, target) pairs: True/False acknowledged, None unknown
        self.follows: dict[tuple[int, int], bool | None] = {
            (f, t): False for f in range(len(users.followers)) for t in range(len(users.targets))}
        self.busy: set[tuple[int, int]] = set()
        self.acknowledged = Counter[str]()
        self.stopping = False
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def main(self) -> None:
        tasks = [asyncio.ensure_future(self.requests()), asyncio.ensure_future(self.watch_hls())]
        tasks += [asyncio.ensure_future(self.viewer(index)) for index in range(self.viewer_count)]
        while not self.stopping:
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # requests

    def next_request(self) -> tuple[str, str, str, dict[str, str], tuple[int, int] | None]:
        """(kind, method, path, headers, follow pair) of the next request of the mix."""
        kind = random.choices([k for k, _, _ in MIX], [w for _, w, _ in MIX])[0]
        users = self.users
        if kind == "streams":
            return kind, "GET", "/api/v1/streams", {}, None
        if kind == "categories":
            return kind, "GET", "/api/v1/categories", {}, None
        if kind == "user":
            return kind, "GET", f"/api/v1/users/{random.choice(users.targets)['username']}", {}, None
        if kind == "profile":
            token = random.choice(users.followers)["token"]
            return kind, "GET", "/api/v1/users/profile", {"Authorization": f"Bearer {token}"}, None
        free = [pair for pair in self.follows if pair not in self.busy]
        followed = [pair for pair in free if self.follows[pair]]
        unfollow = bool(followed) and random.random() < 0.35
        pair = random.choice(followed if unfollow else
                             [p for p in free if not self.follows[p]] or free)
        self.busy.add(pair)
        follower, target = users.followers[pair[0]], users.targets[pair[1]]
        return ("unfollow" if unfollow else "follow", "DELETE" if unfollow else "POST",
                f"/api/v1/users/{target['username']}/follow",
                {"Authorization": f"Bearer {follower['token']}"}, pair)

    async def requests(self) -> None:
        pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(16):
            pool.put_nowait(Connection("127.0.0.1", HTTP_PORT))
        start = time.monotonic()
        wall = time.time() - start
        pending: set[asyncio.Future[None]] = set()

        async def one(due: float) -> None:
            kind, method, path, headers, pair = self.next_request()
            connection = await pool.get()
            status, error = 599, ""
            try:
                status, _ = await asyncio.wait_for(
                    connection.request(method, path, headers), REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError,
                    TimeoutError) as exc:
                error = type(exc).__name__
                if connection.writer is not None:
                    connection.writer.close()
                connection.writer = None
            finally:
                pool.put_nowait(connection)
            sample = Sample(wall + due, time.monotonic() - due, kind, status, error)
            self.samples.append(sample)
            if pair is not None:
                self.busy.discard(pair)
                self.follows[pair] = (kind == "follow") if sample.ok else None
                if sample.ok:
                    self.acknowledged[kind] += 1

        index = 0
        try:
            while not self.stopping:
                due = start + index / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one(due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
        finally:
            if pending:
                await asyncio.wait(pending, timeout=REQUEST_TIMEOUT + 1)

    # viewers

    async def viewer(self, index: int) -> None:
        while not self.stopping:
            request = tornado.httpclient.HTTPRequest(
                f"ws://127.0.0.1:{HTTP_PORT}/ws/streams/{self.stream_id}/viewers",
                headers={"Origin": f"http://127.0.0.1:{HTTP_PORT}"}, connect_timeout=10,
                request_timeout=10)
            try:
                socket = await tornado.websocket.websocket_connect(request)
            except (OSError, tornado.httpclient.HTTPClientError,
                    tornado.websocket.WebSocketError) as error:
                self.viewer_events.append((time.time(), index, f"connect failed: {error}"))
                await asyncio.sleep(0.5)
                continue
            self.open_viewers += 1
            self.viewer_events.append((time.time(), index, "open"))
            try:
                while (message := await socket.read_message()) is not None:
                    self.viewer_messages += 1
                    del message
                self.viewer_events.append(
                    (time.time(), index, f"closed {socket.close_code} {socket.close_reason or ''}"
                     .strip()))
            finally:
                self.open_viewers -= 1
                socket.close()
            await asyncio.sleep(0.2)

    # HLS

    async def watch_hls(self) -> None:
        connection = Connection("127.0.0.1", HTTP_PORT)
        while not self.stopping:
            try:
                status, body = await asyncio.wait_for(connection.request(
                    "GET", f"/hls/{self.stream_id}/{self.variant}", {}), 5)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, TimeoutError):
                status, body = 599, b""
                connection = Connection("127.0.0.1", HTTP_PORT)
            if status == 200:
                sequence, segments = media_playlist(body.decode(errors="replace"))
                last = segments[-1] if segments else ""
                if not self.hls or self.hls[-1][1:] != (sequence, last):
                    self.hls.append((time.time(), sequence, last))
            else:
                self.hls_errors[status] += 1
            await asyncio.sleep(0.5)
