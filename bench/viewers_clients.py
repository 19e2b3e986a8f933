"""bench/viewers.py's client side: WebSocket viewers, churn and REST load, in processes of their
own pinned to CLIENT_CPU and driven over a pipe by bench/viewers_run.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.viewers_stack import CLIENT_CPU, raise_nofile  # noqa: E402
from harness.client import Connection  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402

PER_NETWORK = 4             # anonymous viewers per /24 (what the platform counts at most)
MAX_PER_PROCESS = 5000      # sockets per client process (20,000 descriptors at most)

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
ANCILLARY = socket.CMSG_SPACE(16)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def viewer_address(number: int) -> str:
    """The source address of viewer `number`: its own, PER_NETWORK of them per /24."""
    network, host = divmod(number, PER_NETWORK)
    return f"127.{80 + network // 256}.{network % 256}.{1 + host}"



# --- a minimal WebSocket client: non-blocking sockets on the asyncio loop, kernel timestamps ------

HANDSHAKE, OPEN, DONE = 0, 1, 2


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked, RFC 6455 §5.3) of any length a load generator sends."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + mask + body


class Viewer:
    """One WebSocket viewer; keeps (kernel arrival, read time, payload) of every text message."""

    __slots__ = ("fleet", "sock", "fd", "state", "buf", "key", "started", "opened", "msgs",
                 "ended", "end_reason", "leaving", "open_future")

    def __init__(self, fleet: Fleet, sock: socket.socket, key: bytes) -> None:
        self.fleet, self.sock, self.fd, self.key = fleet, sock, sock.fileno(), key
        self.state, self.buf = HANDSHAKE, b""
        self.started = time.time()
        self.opened = 0.0          # kernel arrival of the 101 response
        self.msgs: list[tuple[float, float, bytes]] = []
        self.ended = 0.0
        self.end_reason = ""
        self.leaving = False       # we are closing it (churn leave, stop): not a drop
        self.open_future: asyncio.Future[bool] | None = None

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.finish(f"error {error.errno}")
            return
        now = time.time()
        arrival = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                seconds, nanos = struct.unpack("qq", raw[:16])
                arrival = seconds + nanos * 1e-9
        if not data:
            self.finish("eof")
            return
        buf = self.buf + data if self.buf else data
        if self.state == HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end].decode("latin-1"), buf[end + 4:]
            status = head.split(" ", 2)[1] if " " in head else "?"
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
            if status != "101" or accept not in head:
                self.finish(f"http {status}")
                return
            self.state, self.opened = OPEN, arrival
            self.fleet.opened(self)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            first, length, header = buf[pos], buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < header + length:
                break
            payload = buf[pos + header:pos + header + length]
            pos += header + length
            opcode = first & 0x0F
            if opcode == 1:
                self.on_text(arrival, now, payload)
            elif opcode == 9:
                self.send(masked_frame(0xA, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.finish(f"close {code} {payload[2:].decode(errors='replace')}".strip())
                return
        self.buf = buf[pos:]

    def on_text(self, arrival: float, read: float, payload: bytes) -> None:
        """A text message (kernel arrival, read time): `viewers` totals are kept, others counted."""
        if payload.startswith(b'{"type": "viewers"'):
            self.msgs.append((arrival, read, payload))
        else:
            self.fleet.other_messages[payload[:30]] += 1

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            pass  # a full buffer on a 10-byte frame means the server stopped reading: seen later

    def leave(self) -> float:
        """Close from our side (a viewer leaving); the time the close frame was sent."""
        self.leaving = True
        moment = time.time()
        self.send(masked_frame(0x8, struct.pack("!H", 1000)))
        return moment

    def finish(self, reason: str) -> None:
        if self.state == DONE:
            return
        was_open = self.state == OPEN
        self.state, self.ended, self.end_reason = DONE, time.time(), reason
        try:
            self.fleet.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.sock.close()
        if self.open_future and not self.open_future.done():
            self.open_future.set_result(False)
        self.fleet.ended(self, was_open)


class Fleet:
    """The viewers of one client process."""

    def __init__(self, params: dict[str, Any], viewer_class: type[Viewer] = Viewer) -> None:
        self.params = params
        self.viewer_class = viewer_class
        self.loop = asyncio.get_event_loop()
        self.viewers: list[Viewer] = []
        self.open_count = 0
        self.failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.drop_times: list[float] = []
        self.other_messages: Counter[bytes] = Counter()
        # /viewers (counts only) unless the params name another socket of the stream (/live),
        # or another path altogether (params['path'], e.g. /ws/notifications).
        self.path = params.get("path") or (
            f"/ws/streams/{params['stream_id']}/{params.get('socket', 'viewers')}")
        self.request_tail = (f" HTTP/1.1\r\nHost: 127.0.0.1:{params['port']}\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Version: 13\r\n"
                             f"Origin: {params['origin']}\r\n")  # the platform's public origin

    async def connect(self, source: str, query: str = "") -> Viewer | None:
        """Open one viewer from `source`; `query` (e.g. `?ticket=…`) goes on the path."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((source, 0))
            await asyncio.wait_for(self.loop.sock_connect(sock, ("127.0.0.1", self.params["port"])),
                                   10)
        except (TimeoutError, OSError) as error:
            sock.close()
            self.failures[f"connect {getattr(error, 'errno', 'timeout')}"] += 1
            return None
        key = base64.b64encode(os.urandom(16))
        viewer = self.viewer_class(self, sock, key)
        viewer.open_future = self.loop.create_future()
        self.viewers.append(viewer)
        self.loop.add_reader(viewer.fd, viewer.readable)
        viewer.send((f"GET {self.path}{query}{self.request_tail}"
                     f"Sec-WebSocket-Key: {key.decode()}\r\n\r\n").encode())
        return viewer

    def opened(self, viewer: Viewer) -> None:
        self.open_count += 1
        if viewer.open_future and not viewer.open_future.done():
            viewer.open_future.set_result(True)

    def ended(self, viewer: Viewer, was_open: bool) -> None:
        if was_open:
            self.open_count -= 1
            if not viewer.leaving:
                self.drops[viewer.end_reason] += 1
                self.drop_times.append(viewer.ended)
        elif not viewer.leaving:
            self.failures[viewer.end_reason] += 1

    def expire_handshakes(self, timeout: float = 15) -> None:
        now = time.time()
        for viewer in self.viewers:
            if viewer.state == HANDSHAKE and now - viewer.started > timeout:
                viewer.finish("handshake timeout")

    def last_values(self) -> Counter[int | None]:
        values: Counter[int | None] = Counter()
        for viewer in self.viewers:
            if viewer.state == OPEN:
                values[json.loads(viewer.msgs[-1][2])["viewers"] if viewer.msgs else None] += 1
        return values

    def status(self) -> dict[str, Any]:
        self.expire_handshakes()
        return {"open": self.open_count, "failed": sum(self.failures.values()),
                "failures": dict(self.failures), "dropped": sum(self.drops.values()),
                "drops": dict(self.drops), "last": dict(self.last_values()),
                "handshaking": sum(1 for v in self.viewers if v.state == HANDSHAKE),
                "other_messages": {k.decode(errors="replace"): c
                                   for k, c in self.other_messages.items()}}

    def close_all(self) -> None:
        for viewer in self.viewers:
            if viewer.state != DONE:
                viewer.leaving = True
                viewer.finish("stopped")


def child_setup(niceness: int = 0) -> None:
    die_with_parent()
    os.sched_setaffinity(0, {CLIENT_CPU})
    os.nice(niceness)
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


async def serve_commands(pipe: Any, handlers: dict[str, Any]) -> Any:
    """Answer the parent's commands until one handler returns a final result."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def on_command() -> None:
        while pipe.poll():
            try:
                name, *args = pipe.recv()
            except EOFError:
                if not done.done():
                    done.set_result(None)
                return
            try:
                result = handlers[name](*args)
            except Exception as error:  # answer anyway: the parent reports it
                result = {"error": repr(error)}
                if name == "stop" and not done.done():
                    done.set_result(result)
                    return
            if name == "stop":
                if not done.done():
                    done.set_result(result)
            else:
                pipe.send(result)

    loop.add_reader(pipe.fileno(), on_command)
    try:
        return await done
    finally:
        loop.remove_reader(pipe.fileno())


async def ramp(fleet: Fleet, params: dict[str, Any]) -> None:
    """Connect params['count'] viewers from params['sources'], params['rate'] a second from
    params['start_at'] on (open loop: a slow handshake does not hold back the next one)."""
    pending = set()
    for index in range(params["count"]):
        delay = params["start_at"] + index / params["rate"] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(fleet.connect(params["sources"][index]))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


def client_process(pipe: Any, params: dict[str, Any]) -> None:
    """A share of the N viewers: ramp at params['rate']/s, hold until told to stop."""
    # The viewers stamp arrivals in the kernel, so they can wait; the REST load generator
    # sharing their core must not (its latency is measured in user space).
    child_setup(niceness=10)

    async def main() -> None:
        fleet = Fleet(params)
        ramping = asyncio.ensure_future(ramp(fleet, params))

        def stop() -> dict[str, Any]:
            ramping.cancel()
            status = fleet.status()
            stopped_at = time.time()
            fleet.close_all()
            viewers = []
            for viewer in fleet.viewers:
                if not viewer.opened:
                    continue
                messages = []
                for arrival, read, payload in viewer.msgs:
                    body = json.loads(payload)
                    messages.append((arrival, read, body["viewers"], body["ts"]))
                dropped = viewer.end_reason != "stopped"
                viewers.append((viewer.opened, viewer.ended if dropped else 0.0,
                                viewer.end_reason if dropped else "", messages))
            return {"status": status, "stopped_at": stopped_at, "viewers": viewers}

        result = await serve_commands(pipe, {"status": fleet.status, "stop": stop})
        pipe.send(result)

    asyncio.run(main())


def churn_process(pipe: Any, params: dict[str, Any]) -> None:
    """Viewers that join and leave in small steps; records every change and its expected total."""
    child_setup()

    async def main() -> None:
        fleet = Fleet(params)
        rng = random.Random(params["seed"])
        pool: list[Viewer] = []
        changes: list[tuple[float, int, int, int]] = []   # (time, expected total, +1/-1, step)
        steps: list[tuple[float, float, int]] = []        # (first change, last change, size)
        base = params["base"]
        state = {"running": False, "deadline": 0.0}
        join_failures: Counter[str] = Counter()
        addresses = itertools.count(params["first_address"])

        async def step(number: int) -> None:
            size = rng.randint(1, params["size"])
            joining = not pool or (len(pool) < params["max_pool"] and rng.random() < 0.5)
            before = base + len(pool)
            if joining:
                viewers = [v for v in await asyncio.gather(
                    *(fleet.connect(viewer_address(next(addresses))) for _ in range(size))) if v]
                results = await asyncio.gather(*(asyncio.wait_for(asyncio.shield(v.open_future),  # type: ignore[arg-type]
                                                                  15) for v in viewers),
                                               return_exceptions=True)
                joined = []
                for viewer, ok in zip(viewers, results, strict=True):
                    if ok is True:
                        joined.append(viewer)
                    else:
                        join_failures[viewer.end_reason or "timeout"] += 1
                        viewer.leaving = True
                        viewer.finish("join failed")
                joined.sort(key=lambda v: v.opened)
                pool.extend(joined)
                times = [v.opened for v in joined]
                for index, moment in enumerate(times):
                    changes.append((moment, before + index + 1, +1, number))
            else:
                leaving = rng.sample(pool, min(size, len(pool)))
                times = []
                for index, viewer in enumerate(leaving):
                    pool.remove(viewer)
                    moment = viewer.leave()
                    times.append(moment)
                    changes.append((moment, before - index - 1, -1, number))
                for viewer in leaving:  # the server answers the close; drop it after a moment
                    fleet.loop.call_later(5, viewer.finish, "left")
            if times:
                steps.append((min(times), max(times), len(times)))

        async def run() -> None:
            number = 0
            while time.time() < state["deadline"]:
                await step(number)
                number += 1
                await asyncio.sleep(max(0.1, params["every"] + rng.uniform(-0.25, 0.25)))

        task: list[asyncio.Future[Any]] = []

        def start(seconds: float) -> bool:
            state["deadline"] = time.time() + seconds
            task.append(asyncio.ensure_future(run()))
            return True

        def status() -> dict[str, Any]:
            return {"pool": len(pool), "changes": len(changes), "running": bool(task)
                    and not task[0].done(), "expected": base + len(pool),
                    "error": repr(task[0].exception()) if task and task[0].done()
                    and task[0].exception() else None}

        def stop() -> dict[str, Any]:
            for t in task:
                t.cancel()
            result = {"changes": changes, "steps": steps, "join_failures": dict(join_failures),
                      "drops": dict(fleet.drops), "final_expected": base + len(pool)}
            fleet.close_all()
            return result

        result = await serve_commands(pipe, {"start": start, "status": status, "stop": stop})
        pipe.send(result)

    asyncio.run(main())


def rest_process(pipe: Any, params: dict[str, Any]) -> None:
    """Open-loop REST reads: latency counted from each request's due time. One window per
    {"start_at", "seconds"} received, answered with its results; None ends it."""
    child_setup()

    async def main(params: dict[str, Any]) -> None:
        pool: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(params["connections"]):
            pool.put_nowait(Connection("127.0.0.1", params["port"]))
        results: list[tuple[float, float, int]] = []
        rng = random.Random(7)

        async def one(due: float, path: str) -> None:
            connection = await pool.get()
            try:
                status, _ = await asyncio.wait_for(connection.request("GET", path, {}), 10)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                if connection.writer is not None:
                    connection.writer.close()
                connection.writer = None
                status = 599
            pool.put_nowait(connection)
            results.append((due, time.time() - due, status, path))

        start, tasks = params["start_at"], set()
        index = 0
        while params["rate"] > 0:
            due = start + index / params["rate"]
            if due >= start + params["seconds"]:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            path = (params["paths"][0] if index % 2 == 0
                    else rng.choice(params["paths"][1:]))
            task = asyncio.ensure_future(one(due, path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for connection in pool._queue:  # type: ignore[attr-defined]
            if connection.writer is not None:
                connection.writer.close()
        pipe.send(results)

    while (window := pipe.recv()) is not None:
        asyncio.run(main({**params, **window}))
