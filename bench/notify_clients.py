"""bench/notify.py's client side: signed-in followers on `/ws/notifications`, in processes of
their own pinned to CLIENT_CPU and driven over a pipe by bench/notify_run.py.

They are bench/viewers_clients.py's viewers (raw non-blocking sockets on the asyncio loop, each
from an address of its own, arrivals stamped by the kernel: SO_TIMESTAMPNS, CLOCK_REALTIME)
on another path: each follower takes a one-time ticket over REST through the public port
(`POST /api/ws/ticket` with its access token, on a few keep-alive connections of the process)
and opens `/ws/notifications?ticket=…` from its own address. A follower keeps the kernel
arrival of its first `{"type": "notification"}` frame, how many it got, and of which stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.viewers_clients import Fleet, Viewer, child_setup, serve_commands  # noqa: E402
from harness.client import Connection  # noqa: E402

PATH = "/ws/notifications"


class Follower(Viewer):
    """One open tab of a follower: the arrival of its first notification, and what it got."""

    __slots__ = ("notified", "notifications", "streams", "counts")

    def __init__(self, fleet: Fleet, sock: socket.socket, key: bytes) -> None:
        super().__init__(fleet, sock, key)
        self.notified = 0.0        # kernel arrival of the first notification frame
        self.notifications = 0     # notification frames
        self.streams: set[int] = set()
        self.counts = 0            # unread_count frames

    def on_text(self, arrival: float, read: float, payload: bytes) -> None:
        if b"unread_count" in payload and b'"notification"' not in payload:
            self.counts += 1
            return
        try:
            body = json.loads(payload)
        except ValueError:
            self.fleet.other_messages[payload[:30]] += 1
            return
        if body.get("type") != "notification":
            self.fleet.other_messages[payload[:30]] += 1
            return
        self.notifications += 1
        if not self.notified:
            self.notified = arrival
        try:
            self.streams.add(int(body["notification"]["data"]["stream_id"]))
        except (KeyError, TypeError, ValueError):
            self.streams.add(-1)


def follower_process(pipe: Any, params: dict[str, Any]) -> None:
    """params['tokens'] followers (one access token each) from params['sources']: ramp at
    params['rate']/s from params['start_at'] (open loop: a ticket then the socket, each
    follower on its own schedule), hold until told to stop."""
    child_setup(niceness=10)  # arrivals are stamped in the kernel: they can wait for the CPU

    async def main() -> None:
        fleet = Fleet({**params, "path": PATH}, Follower)
        pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(params.get("ticket_connections", 4)):
            pool.put_nowait(Connection("127.0.0.1", params["port"]))
        ticket_failures: Counter[str] = Counter()
        pending: set[asyncio.Future[Any]] = set()

        async def one(token: str, source: str) -> None:
            # Twice at most: a keep-alive connection the edge closed (after its
            # keepalive_requests) fails the first write or read, which is this client's doing.
            for attempt in (1, 2):
                http = await pool.get()
                try:
                    status, raw = await asyncio.wait_for(http.request(
                        "POST", "/api/ws/ticket", {"Authorization": f"Bearer {token}"}), 10)
                except Exception as error:  # noqa: BLE001 (a closed connection: IndexError too)
                    http.close()
                    if attempt == 2:
                        ticket_failures[type(error).__name__] += 1
                        return
                    continue
                finally:
                    pool.put_nowait(http)
                break
            if status != 200:
                ticket_failures[f"http {status}"] += 1
                return
            await fleet.connect(source, f"?ticket={json.loads(raw)['ticket']}")

        async def ramp() -> None:
            for index, (token, source) in enumerate(zip(params["tokens"], params["sources"],
                                                        strict=True)):
                delay = params["start_at"] + index / params["rate"] - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one(token, source))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        ramping = asyncio.ensure_future(ramp())

        def status() -> dict[str, Any]:
            state = fleet.status()
            state.pop("last", None)
            followers = [v for v in fleet.viewers if isinstance(v, Follower)]
            state["ticket_failures"] = dict(ticket_failures)
            state["ramped"] = ramping.done()
            state["notified"] = sum(1 for v in followers if v.notified)
            state["joined"] = sum(1 for v in followers if v.counts)  # the count on connect
            return state

        def stop() -> dict[str, Any]:
            ramping.cancel()
            state = status()
            arrivals = array("d")
            open_missing, duplicates, wrong, dropped_missing = 0, 0, 0, 0
            for viewer in fleet.viewers:
                assert isinstance(viewer, Follower)
                if not viewer.opened:
                    continue
                if viewer.notified:
                    arrivals.append(viewer.notified)
                    duplicates += viewer.notifications - 1
                    wrong += 1 if viewer.streams - {params.get("stream_id", -2)} else 0
                elif viewer.end_reason:
                    dropped_missing += 1
                else:
                    open_missing += 1
            fleet.close_all()
            return {"status": state, "arrivals": arrivals.tobytes(), "open_missing": open_missing,
                    "dropped_missing": dropped_missing, "duplicates": duplicates,
                    "wrong_stream": wrong}

        def expect(stream_id: int) -> bool:
            params["stream_id"] = stream_id
            return True

        result = await serve_commands(pipe, {"status": status, "stop": stop, "expect": expect})
        for http in pool._queue:  # type: ignore[attr-defined]
            http.close()
        pipe.send(result)

    asyncio.run(main())
