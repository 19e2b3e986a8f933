"""Live-viewers WebSocket benchmark: N concurrent viewers of one stream on one API node, with churn.

Starts an isolated stack (database `sf_bench_viewers`, a Redis server of its own on :17379, an
API node pinned to CPU 0 with nginx in front on :17280, all state in a temporary var dir),
creates a user and a prepared stream over REST, then from processes pinned to CPU 1:

- ramps up N anonymous viewers (`/ws/streams/{id}/viewers`, one fresh `sf_vid` each, so each
  counts once) split over several client processes, each from a source address of its own,
  four per /24 (127.80.0.0/12: the platform counts a few anonymous viewers per address range
  and limits handshakes per address, as it would for real viewers);
- measures an open-loop REST load (200/s of `GET /api/streams`, `GET /api/users/<name>`, the
  stream list over 1,000 seeded live streams as in bench/api.py) alone first (baseline: this
  shared machine's own noise), then during the hold and the churn;
- churns: every ~2 s a churn process makes a few viewers join or leave at once and records
  when each change happened (join: kernel arrival of its `101 Switching Protocols`; leave: the
  moment its close frame is sent) and the total expected after it. Every client stamps each
  `viewers` message with its kernel arrival time (SO_TIMESTAMPNS), so client-side scheduling on
  the loaded CPU 1 does not count as server delay (it is shown separately).

Delay of a change, per client = arrival of the first message that reflects it (sent after the
change, value at or past the change's expected total) - the change's time. Also printed: where
that time goes (server: change → message `ts`; send: `ts` → arrival), messages received vs
broadcast, dropped connections, how long a new viewer waits for its first total, the API
node's RSS and CPU per phase (and how busy CPU 0 was with other work), REST latency, and with
--profile the API node's event loop per phase from py-spy (`.venv/bin/pip install py-spy`).

    .venv/bin/python bench/viewers.py [--viewers 10000] [--processes 4] [--seconds 30]
        [--hold 10] [--via edge|api] [--ladder] [--profile] [--details] [--keep]

--via edge (default): clients and REST go through the platform's public port, the edge nginx
that `make run` starts (one worker per core, `reuseport`), as users do.
--via api: clients connect straight to the API node (what the server alone costs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from sf.config import ensure_secrets, load_config, with_url_path  # noqa: E402
from sf.db.migrate import recreate_database  # noqa: E402
from sf.media import nginx  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402
from sf.node import localservices  # noqa: E402

# bench/api.py's keep-alive HTTP client and its 1,000-live-stream seed (the REST workload).
_spec = importlib.util.spec_from_file_location("sf_bench_api", ROOT / "bench" / "api.py")
assert _spec and _spec.loader
api_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_bench)
Connection = api_bench.Connection

HTTP_PORT, API_PORT = 17280, 17281  # + control 17282, RTMP 17283, media HTTP 17286
REDIS_PORT = 17379
BENCH_DB = "sf_bench_viewers"
SERVER_CPU, CLIENT_CPU = 0, 1
PER_NETWORK = 4             # anonymous viewers per /24 (what the platform counts at most)
MAX_PER_PROCESS = 5000      # sockets per client process (20,000 descriptors at most)
LADDER = (1000, 2500, 5000, 10000)
TARGET_DELAY_P99, TARGET_RSS, TARGET_REST_P95 = 1.0, 1 << 30, 0.050

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
ANCILLARY = socket.CMSG_SPACE(16)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def viewer_address(number: int) -> str:
    """The source address of viewer `number`: its own, PER_NETWORK of them per /24."""
    network, host = divmod(number, PER_NETWORK)
    return f"127.{80 + network // 256}.{network % 256}.{1 + host}"


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(ordered: list[float], p: float) -> float:
    """Percentile of an already sorted list."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- a minimal WebSocket client: non-blocking sockets on the asyncio loop, kernel timestamps ------

HANDSHAKE, OPEN, DONE = 0, 1, 2


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


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
                if payload.startswith(b'{"type": "viewers"'):
                    self.msgs.append((arrival, now, payload))
                else:
                    self.fleet.other_messages[payload[:30]] += 1
            elif opcode == 9:
                self.send(masked_frame(0xA, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.finish(f"close {code} {payload[2:].decode(errors='replace')}".strip())
                return
        self.buf = buf[pos:]

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

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.loop = asyncio.get_event_loop()
        self.viewers: list[Viewer] = []
        self.open_count = 0
        self.failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.drop_times: list[float] = []
        self.other_messages: Counter[bytes] = Counter()
        path = f"/ws/streams/{params['stream_id']}/viewers"
        self.request_head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{params['port']}\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Version: 13\r\n"
                             f"Origin: http://127.0.0.1:{HTTP_PORT}\r\n")  # the platform's public origin

    async def connect(self, source: str) -> Viewer | None:
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
        viewer = Viewer(self, sock, key)
        viewer.open_future = self.loop.create_future()
        self.viewers.append(viewer)
        self.loop.add_reader(viewer.fd, viewer.readable)
        viewer.send((self.request_head + f"Sec-WebSocket-Key: {key.decode()}\r\n\r\n").encode())
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


def client_process(pipe: Any, params: dict[str, Any]) -> None:
    """A share of the N viewers: ramp at params['rate']/s, hold until told to stop."""
    # The viewers stamp arrivals in the kernel, so they can wait; the REST load generator
    # sharing their core must not (its latency is measured in user space).
    child_setup(niceness=10)

    async def main() -> None:
        fleet = Fleet(params)
        sources = params["sources"]

        async def ramp() -> None:
            pending = set()
            for index in range(params["count"]):
                delay = params["start_at"] + index / params["rate"] - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(fleet.connect(sources[index]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        ramping = asyncio.ensure_future(ramp())

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


# --- the server side: /proc sampling -------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                values[name] = int(value.split()[0])
    return values


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each CPU."""
    result = {}
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("cpu") and line[3].isdigit():
                name, *numbers = line.split()
                values = [int(n) for n in numbers]
                idle = values[3] + values[4]
                result[name] = (sum(values) - idle, sum(values))
    return result


class Sampler(threading.Thread):
    """Samples the API node (RSS, CPU, fds) and the proxies' CPU every 0.5 s."""

    def __init__(self, api_pid: int, proxies: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.api_pid, self.proxies = api_pid, proxies
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def sample(self) -> dict[str, Any]:
        status = proc_status(self.api_pid)
        proxies = {}
        for name, master in self.proxies.items():
            total = 0.0
            for pid in [master, *children_of(master)]:
                try:
                    total += proc_cpu(pid)
                except OSError:
                    pass
            proxies[name] = total
        try:
            fds = len(os.listdir(f"/proc/{self.api_pid}/fd"))
        except OSError:
            fds = -1
        return {"t": time.time(), "cpu": proc_cpu(self.api_pid), "rss": status["VmRSS"] * 1024,
                "hwm": status["VmHWM"] * 1024, "threads": status["Threads"], "fds": fds,
                "proxies": proxies, "cores": core_times()}

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                self.samples.append(self.sample())
            except (OSError, KeyError):
                return

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        inside = [s for s in self.samples if start <= s["t"] <= end]
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        wall = last["t"] - first["t"]
        cores = {}
        for name in first["cores"]:
            busy = last["cores"][name][0] - first["cores"][name][0]
            total = last["cores"][name][1] - first["cores"][name][1]
            cores[name] = busy / total if total else math.nan
        return {"cpu": (last["cpu"] - first["cpu"]) / wall,
                "rss_max": max(s["rss"] for s in inside), "rss_end": last["rss"],
                "fds": last["fds"], "threads": last["threads"],
                "proxies": {n: (last["proxies"][n] - first["proxies"][n]) / wall
                            for n in first["proxies"]}, "cores": cores}


# --- the stack ------------------------------------------------------------------------------------

class Stack:
    """PostgreSQL database, Redis server, the node's nginx and the edge, one API node (CPU 0)."""

    def __init__(self, via: str) -> None:
        self.via = via
        self.work = Path(tempfile.mkdtemp(prefix="sf-bench-viewers-"))
        self.front: nginx.Front | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.redis_process: subprocess.Popen[bytes] | None = None
        self.api_log = self.work / "api.log"

    def start(self) -> None:
        base = load_config()
        localservices.start_all(base)
        var = self.work / "var"
        ensure_secrets(var)  # fresh secrets for this node; the database URL carries its password
        # A Redis server of its own, not a db number on the shared one: Redis pub/sub ignores db
        # numbers, and the stream events of every other node on this machine (a dev node, test
        # suites) would reach this node's viewers ("stream" messages, 4404 closes).
        self.redis_process = self.start_redis((var / "secrets" / "redis_password").read_text()
                                              .strip())
        self.env = {
            **os.environ,
            "SF_VAR_DIR": str(var), "SF_MEDIA_DIR": str(self.work / "media"),
            "SF_DATABASE_URL": with_url_path(base.database_url, BENCH_DB),
            "SF_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
            "SF_API_PORT": str(API_PORT), "SF_HTTP_PORT": str(HTTP_PORT),
            "SF_MEDIA_CONTROL_PORT": str(HTTP_PORT + 2), "SF_RTMP_PORT": str(HTTP_PORT + 3),
            "SF_API_INTERNAL_PORT": str(HTTP_PORT + 4), "SF_API_PROCESSES": "1",  # pinned to CPU 0
            "SF_MEDIA_HTTP_PORT": str(HTTP_PORT + 6),
            "SF_RATE_LIMIT_ANONYMOUS": "100000000", "SF_RATE_LIMIT_USER": "100000000",
            "SF_RATE_LIMIT_AUTH_IP": "100000000", "SF_RATE_LIMIT_AUTH_ACCOUNT": "100000000",
            "SF_BCRYPT_ROUNDS": "4", "SF_LOG_LEVEL": "WARNING", "SF_ENV": "production",
        }
        # The server's own defaults apply: the viewers come from addresses of their own, four
        # per /24, as the per-network cap and the per-address handshake limit expect.
        for name in ("SF_WS_CONNECTIONS_PER_ADDRESS", "SF_VIEWERS_ANONYMOUS_PER_NETWORK",
                     "SF_WS_HANDSHAKES_PER_MINUTE"):
            self.env.pop(name, None)
        asyncio.run(recreate_database(base.database_url, BENCH_DB))
        self.config = load_config(self.env)
        self.front = nginx.Front(self.config).start()
        with open(self.api_log, "ab") as output:
            self.server = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "sf"), "serve"], env=self.env, stdout=output,
                stderr=output, stdin=subprocess.DEVNULL, preexec_fn=pinned(SERVER_CPU))
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the API node exited: {self.log_tail()}")
            try:
                if self.call("GET", "/readyz", port=HTTP_PORT)[0] == 200:
                    return
            except (OSError, ValueError, asyncio.IncompleteReadError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API node did not become ready: {self.log_tail()}")

    def start_redis(self, password: str) -> subprocess.Popen[bytes]:
        directory = self.work / "redis"
        directory.mkdir()
        process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory),
             "--requirepass", password, "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with redis.Redis(port=REDIS_PORT, password=password, socket_timeout=1) as client:
                    if client.ping():
                        return process
            except redis.RedisError:
                time.sleep(0.1)
        process.kill()
        raise RuntimeError("the bench's redis-server did not start")

    @property
    def entry_port(self) -> int:
        """Where REST goes: the public port (the edge)."""
        return HTTP_PORT

    @property
    def ws_port(self) -> int:
        return HTTP_PORT if self.via == "edge" else API_PORT

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             port: int | None = None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            connection = Connection("127.0.0.1", port or self.entry_port)
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = json.dumps(body).encode() if body is not None else b""
            try:
                status, raw = await asyncio.wait_for(
                    connection.request(method, path, headers, data), 30)
            finally:
                if connection.writer is not None:
                    connection.writer.close()
            return status, json.loads(raw) if raw else None
        return asyncio.run(go())

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.api_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def server_warnings(self) -> Counter[str]:
        found: Counter[str] = Counter()
        try:
            for line in self.api_log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    message = str(record.get("message", line)).replace("\n", " ")[:100]
                    found[f"{record.get('level', '?')}: {message}"] += 1
                except ValueError:
                    found[line[:100]] += 1
        except OSError:
            pass
        return found

    def stop(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.front is not None:
            self.front.stop()
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            try:
                self.redis_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis_process.kill()
                self.redis_process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def pinned(cpu: int) -> Any:
    def setup() -> None:
        die_with_parent()
        os.sched_setaffinity(0, {cpu})
    return setup


PROFILE_SKIP = {"<module>", "main", "cmd_serve", "run_serve", "run", "Runner.run",
                "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever",
                "BaseEventLoop._run_once", "Handle._run"}


class Profiler:
    """py-spy (from .venv, if installed) on the API node, one recording per phase."""

    def __init__(self, stack: Stack, enabled: bool) -> None:
        self.stack = stack
        self.binary = ROOT / ".venv" / "bin" / "py-spy"
        self.enabled = enabled and self.binary.exists()
        if enabled and not self.enabled:
            log("--profile: no py-spy in .venv (.venv/bin/pip install py-spy)")
        self.current: tuple[str, subprocess.Popen[bytes]] | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def start(self, phase: str) -> None:
        self.stop()
        if not self.enabled:
            return
        assert self.stack.server is not None
        process = subprocess.Popen(
            [str(self.binary), "record", "--pid", str(self.stack.server.pid), "--duration",
             "3600", "--rate", "100", "--nonblocking", "--idle", "--format", "raw",
             "--output", str(self.stack.work / f"profile-{phase}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(CLIENT_CPU))
        self.current = (phase, process)

    def stop(self) -> None:
        if self.current is None:
            return
        phase, process = self.current
        self.current = None
        process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        summary = self.summarize(self.stack.work / f"profile-{phase}.txt")
        if summary:
            self.results[phase] = summary

    @staticmethod
    def summarize(path: Path) -> dict[str, Any] | None:
        """Inclusive share of the event loop thread's samples per function (idle included)."""
        if not path.exists():
            return None
        counts: Counter[str] = Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack_text, _, number = line.rpartition(" ")
            if not number.isdigit():
                continue
            frames = stack_text.split(";")
            if frames[0].startswith("Thread._bootstrap"):
                continue  # pykka actors and executor threads: mostly waiting on their queues
            weight = int(number)
            seen = set()
            for frame in frames:
                if frame.split(" (")[0] in PROFILE_SKIP:
                    continue
                match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
                name = (f"{match.group(1)} ({'/'.join(Path(match.group(2)).parts[-2:])})"
                        if match else frame)
                if name not in seen:
                    seen.add(name)
                    counts[name] += weight
            total += weight
        if not total:
            return None
        return {"samples": total, "top": [(name, count / total)
                                          for name, count in counts.most_common(14)]}


# --- one run --------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace, viewers: int) -> None:
        self.args, self.n = args, viewers
        self.processes: list[Any] = []
        self.owners: dict[int, Any] = {}
        self.context = multiprocessing.get_context("fork")

    def spawn(self, target: Any, params: dict[str, Any]) -> Any:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(target=target, args=(child_end, params), daemon=True,
                                       name=f"{target.__name__}-{len(self.processes)}")
        process.start()
        child_end.close()
        self.processes.append(process)
        self.owners[id(parent_end)] = process
        return parent_end

    def ask(self, pipes: list[Any], *command: Any, timeout: float = 30) -> list[Any]:
        for pipe in pipes:
            pipe.send(command)
        answers = []
        for pipe in pipes:
            if not pipe.poll(timeout):
                process = self.owners[id(pipe)]
                raise RuntimeError(f"{process.name} (pid {process.pid}, alive "
                                   f"{process.is_alive()}) did not answer {command[0]!r} "
                                   f"within {timeout:.0f} s")
            answers.append(pipe.recv())
        return answers

    def cleanup(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    def execute(self) -> dict[str, Any]:
        args, n = self.args, self.n
        stack = Stack(args.via)
        sampler: Sampler | None = None
        profiler = Profiler(stack, args.profile)
        try:
            log(f"N={n}: starting the stack in {stack.work}")
            stack.start()
            status, body = stack.call("POST", "/api/auth/register", {
                "username": "bench_streamer", "email": "bench_streamer@example.com",
                "password": "bench-password-1"})
            assert status == 201, body
            token = body["access_token"]
            status, stream = stack.call("POST", "/api/streams", {
                "title": "viewers bench", "is_private": False}, token=token)
            assert status == 201, stream
            stream_id = stream["id"]
            api_bench.seed_streams({"database_url": stack.env["SF_DATABASE_URL"]})
            proxies = {"nginx": stack.front.processes[0].pid, "edge": stack.front.processes[1].pid}
            if stack.redis_process:
                proxies["redis"] = stack.redis_process.pid
            assert stack.server is not None
            processes = max(args.processes or 4, math.ceil(n / MAX_PER_PROCESS))
            shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
            ramp_seconds = n / args.ramp_rate
            rest = self.spawn(rest_process, {
                "port": stack.entry_port, "rate": args.rest_rate, "connections": 32,
                "paths": ["/api/streams", "/api/users/bench_streamer",
                          *[f"/api/users/live_{i}" for i in range(1, 1001, 7)]]})
            phases: dict[str, float] = {"baseline": time.time() + 0.5}
            phases["baseline_end"] = phases["baseline"] + args.baseline
            rest.send({"start_at": phases["baseline"], "seconds": args.baseline})
            start_at = phases["baseline_end"] + 1.0
            phases["ramp"] = start_at
            clients = []
            first = 0
            for share in shares:
                sources = [viewer_address(first + k) for k in range(share)]
                first += share
                clients.append(self.spawn(client_process, {
                    "stream_id": stream_id, "port": stack.ws_port, "count": share,
                    "rate": args.ramp_rate * share / n, "start_at": start_at,
                    "sources": sources}))
            churn = self.spawn(churn_process, {
                "stream_id": stream_id, "port": stack.ws_port, "first_address": n + 1000,
                "seed": 1, "size": args.churn_size, "every": args.churn_every,
                "max_pool": 4 * args.churn_size, "base": n})
            sampler = Sampler(stack.server.pid, proxies)  # after the forks
            sampler.start()
            profiler.start("ramp")
            log(f"REST alone for {args.baseline:.0f} s (baseline), then ramping {n} viewers at "
                f"{args.ramp_rate:.0f}/s over {processes} processes "
                f"({', '.join(map(str, shares))}) to :{stack.ws_port}")

            # Ramp: until every viewer is open (or failed), and every one shows the total N.
            deadline = start_at + ramp_seconds + 60
            last_print = 0.0
            while True:
                time.sleep(1)
                states = self.ask(clients, "status")
                opened = sum(s["open"] for s in states)
                failed = sum(s["failed"] for s in states) + sum(s["dropped"] for s in states)
                handshaking = sum(s["handshaking"] for s in states)
                last: Counter[Any] = Counter()
                for s in states:
                    last.update(s["last"])
                if time.time() - last_print > 5:
                    log(f"  {time.time() - start_at:5.1f} s: open {opened}, handshaking "
                        f"{handshaking}, failed/dropped {failed}, server RSS "
                        f"{proc_status(stack.server.pid)['VmRSS'] / 1024:.0f} MiB")
                    last_print = time.time()
                if stack.server.poll() is not None:
                    raise RuntimeError(f"the API node died: {stack.log_tail()}")
                if time.time() > start_at + ramp_seconds and opened + failed >= n \
                        and handshaking == 0 and (opened == 0 or last.get(opened) == opened):
                    break
                if time.time() > deadline:
                    log(f"  ramp did not settle: open {opened}, failed {failed}, "
                        f"last totals {last.most_common(4)}")
                    break
            phases["ramp_end"] = time.time()
            profiler.stop()
            ramp_status = states
            log(f"ramp done in {phases['ramp_end'] - start_at:.1f} s: open {opened}/{n}")

            # Hold, then churn; REST load over both.
            phases["hold"] = time.time() + 0.5
            phases["churn"] = phases["hold"] + args.hold
            phases["churn_end"] = phases["churn"] + args.seconds
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report its baseline")
            rest_results = rest.recv()
            rest.send({"start_at": phases["hold"], "seconds": args.hold + args.seconds})
            time.sleep(max(0.0, phases["hold"] - time.time()))
            profiler.start("hold")
            time.sleep(max(0.0, phases["churn"] - time.time()))
            self.ask([churn], "start", args.seconds)
            profiler.start("churn")
            log(f"holding {args.hold:.0f} s, churning {args.seconds:.0f} s, REST "
                f"{args.rest_rate:.0f}/s to :{stack.entry_port}")
            while time.time() < phases["churn_end"]:
                time.sleep(min(5.0, max(0.0, phases["churn_end"] - time.time())))
                if stack.server.poll() is not None:
                    raise RuntimeError(f"the API node died: {stack.log_tail()}")
                if time.time() < phases["churn_end"] - 1:
                    churn_state = self.ask([churn], "status")[0]
                    log(f"  churn: {churn_state['changes']} changes, pool {churn_state['pool']}")
            # Let the last change arrive everywhere, then check every client's final total.
            time.sleep(3.0)
            phases["settled"] = time.time()
            churn_state = self.ask([churn], "status")[0]
            final_states = self.ask(clients, "status")
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report")
            rest_results += rest.recv()
            rest.send(None)
            churn_result = self.ask([churn], "stop")[0]
            results = self.ask(clients, "stop", timeout=120)
            phases["end"] = time.time()
            sampler.stopping.set()
            sampler.join(timeout=2)
            hwm = proc_status(stack.server.pid)["VmHWM"] * 1024
            profiler.stop()
            profile = profiler.results
            return self.analyse(n, stack, phases, ramp_status, final_states, churn_state,
                                churn_result, results, rest_results, sampler, hwm, processes,
                                shares, profile)
        finally:
            # A second Ctrl-C (a terminal sends it to the whole group) must not cut this short.
            previous = {sig: signal.signal(sig, signal.SIG_IGN)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                if sampler is not None:
                    sampler.stopping.set()
                if profiler.current:
                    profiler.current[1].kill()
                    profiler.current[1].wait()
                self.cleanup()
                warnings = stack.server_warnings()
                stack.stop()
                if warnings:
                    log("API node log (WARNING and above), most frequent:")
                    for line, count in warnings.most_common(8):
                        log(f"  {count:>6} × {line}")
                if args.keep:
                    log(f"kept {stack.work}")
                else:
                    stack.remove()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    # --- figures ----------------------------------------------------------------------------------

    def analyse(self, n: int, stack: Stack, phases: dict[str, float], ramp_status: list[Any],
                final_states: list[Any], churn_state: dict[str, Any],
                churn_result: dict[str, Any], results: list[dict[str, Any]],
                rest_results: list[tuple[float, float, int, str]], sampler: Sampler, hwm: int,
                processes: int, shares: list[int],
                profile: dict[str, Any]) -> dict[str, Any]:
        args = self.args
        changes = sorted(churn_result["changes"])
        churn_start, churn_end = phases["churn"], phases["settled"]
        viewers = [v for r in results for v in r["viewers"]]
        opened_at_ramp = sum(s["open"] for s in ramp_status)
        failed = Counter[str]()
        drops = Counter[str]()
        others: Counter[str] = Counter()
        for s in final_states:
            failed.update(s["failures"])
            drops.update(s["drops"])
            others.update(s["other_messages"])
        dropped = [v for v in viewers if v[1]]
        first_message = sorted(v[3][0][0] - v[0] for v in viewers if v[3])
        without_message = sum(1 for v in viewers if not v[3])
        drop_lifetimes = sorted(v[1] - v[0] for v in dropped)
        drop_times = sorted(v[1] - phases["ramp"] for v in dropped)
        # Main viewers watching through the whole churn phase are the measured ones.
        measured = [v for v in viewers if v[0] < churn_start and (not v[1] or v[1] > churn_end)]

        # Broadcasts (server ts) seen by measured viewers during churn.
        broadcast_counts: Counter[float] = Counter()
        for _, _, _, messages in measured:
            for _, _, _, ts in messages:
                if churn_start <= ts <= churn_end:
                    broadcast_counts[ts] += 1
        broadcasts = sorted(broadcast_counts)
        received = sum(broadcast_counts.values())
        expected = len(broadcasts) * len(measured)
        hold_messages = sum(1 for _, _, _, m in measured for a, _, _, ts in m
                            if phases["hold"] <= ts < churn_start)

        delays: list[float] = []
        server_part: list[float] = []
        send_part: list[float] = []
        read_lag: list[float] = []
        unmatched = 0
        per_change_server: dict[int, float] = {}
        per_change: dict[int, list[float]] = {}
        spreads: dict[float, list[float]] = {}
        for _, _, _, messages in measured:
            ts_list = [m[3] for m in messages]
            for index, (moment, total, direction, _) in enumerate(changes):
                start = bisect_left(ts_list, moment)
                match = None
                for m in messages[start:]:
                    if (m[2] >= total) if direction > 0 else (m[2] <= total):
                        match = m
                        break
                if match is None:
                    unmatched += 1
                    continue
                arrival, read, _, ts = match
                delays.append(arrival - moment)
                per_change.setdefault(index, []).append(arrival - moment)
                send_part.append(arrival - ts)
                read_lag.append(read - arrival)
                per_change_server.setdefault(index, ts - moment)
            for arrival, _, _, ts in messages:
                if churn_start <= ts <= churn_end:
                    spreads.setdefault(ts, []).append(arrival)
        server_part = sorted(per_change_server.values())
        fanout = sorted(max(a) - min(a) for a in spreads.values() if len(a) > 1)
        delays.sort()
        send_part.sort()
        read_lag.sort()

        expected_final = churn_state["expected"]
        final_last: Counter[Any] = Counter()
        for s in final_states:
            final_last.update(s["last"])
        final_ok = final_last.get(expected_final, 0)
        final_open = sum(s["open"] for s in final_states)

        def rest_figures(start: float, end: float) -> dict[str, Any]:
            chosen = sorted(r[1] for r in rest_results if start <= r[0] < end)
            errors = Counter(r[2] for r in rest_results if start <= r[0] < end and r[2] >= 400)
            routes: dict[str, list[float]] = {}
            for due, latency, _, path in rest_results:
                if start <= due < end:
                    route = "/api/users/{name}" if path.startswith("/api/users/") else path
                    routes.setdefault(route, []).append(latency)
            return {"count": len(chosen), "p50": pct(chosen, 50), "p95": pct(chosen, 95),
                    "p99": pct(chosen, 99), "max": chosen[-1] if chosen else math.nan,
                    "errors": dict(errors),
                    "routes": {route: (len(values), pct(sorted(values), 95))
                               for route, values in sorted(routes.items())}}

        rest_baseline = rest_figures(phases["baseline"], phases["baseline_end"])
        rest_hold = rest_figures(phases["hold"], churn_start)
        rest_churn = rest_figures(churn_start, phases["churn_end"])
        rest_all = rest_figures(phases["hold"], phases["churn_end"])
        windows = {"baseline": sampler.window(phases["baseline"], phases["baseline_end"]),
                   "ramp": sampler.window(phases["ramp"], phases["ramp_end"]),
                   "hold": sampler.window(phases["hold"], churn_start),
                   "churn": sampler.window(churn_start, phases["churn_end"])}
        held = (opened_at_ramp == n and sum(failed.values()) == 0 and sum(drops.values()) == 0
                and final_open == n and final_ok == n)
        p99 = pct(delays, 99)
        verdicts = {
            "held": held,
            "delay": bool(delays) and p99 < TARGET_DELAY_P99 and unmatched == 0,
            "rss": hwm < TARGET_RSS,
            "rest": args.rest_rate == 0 or (rest_all["count"] > 0 and not rest_all["errors"]
                                            and rest_all["p95"] < TARGET_REST_P95),
        }
        figures = {
            "n": n, "processes": processes, "shares": shares, "via": args.via,
            "opened_at_ramp": opened_at_ramp, "ramp_seconds": phases["ramp_end"] - phases["ramp"],
            "failed": dict(failed), "drops": dict(drops), "drop_lifetimes": drop_lifetimes,
            "first_message": first_message, "without_message": without_message,
            "drop_times": drop_times,
            "measured": len(measured), "changes": len(changes), "steps": churn_result["steps"],
            "churn_join_failures": churn_result["join_failures"],
            "churn_drops": churn_result["drops"],
            "delays": delays, "server_part": server_part,
            "details": [(moment - churn_start, direction, total, step,
                         per_change_server.get(index, math.nan),
                         sorted(per_change.get(index, [])))
                        for index, (moment, total, direction, step) in enumerate(changes)],
            "send_part": send_part,
            "read_lag": read_lag, "fanout": fanout, "unmatched": unmatched,
            "broadcasts": len(broadcasts), "received": received, "expected": expected,
            "hold_messages": hold_messages, "others": dict(others), "expected_final": expected_final,
            "final_ok": final_ok, "final_open": final_open, "final_last": final_last,
            "hwm": hwm, "windows": windows,
            "rest": {"baseline": rest_baseline, "hold": rest_hold, "churn": rest_churn,
                     "all": rest_all},
            "verdicts": verdicts, "ok": all(verdicts.values()), "profile": profile,
        }
        report(figures, stack, args)
        return figures


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value * 1000:.0f} ms"


def report(f: dict[str, Any], stack: Stack, args: argparse.Namespace) -> None:
    n = f["n"]
    path = (f"clients and REST → the public port :{HTTP_PORT} (edge nginx, one worker per core, "
            f"reuseport) → API node :{API_PORT}"
            if f["via"] == "edge" else
            f"clients → API node :{API_PORT} directly; REST through the edge :{HTTP_PORT}")
    print(f"== {n} viewers, one stream, one API node (CPU {SERVER_CPU}); {f['processes']} client "
          f"processes ({'/'.join(map(str, f['shares']))} sockets) + churn + REST on CPU "
          f"{CLIENT_CPU}")
    print(f"   path: {path}")
    print(f"   connected {f['opened_at_ramp']}/{n} in {f['ramp_seconds']:.1f} s "
          f"(ramp {args.ramp_rate:.0f}/s); failed to connect "
          f"{sum(f['failed'].values())} {f['failed'] or ''}; dropped by the server "
          f"{sum(f['drops'].values())} {f['drops'] or ''}; still open at the end "
          f"{f['final_open']}/{n}")
    first = f["first_message"]
    print(f"   a new viewer's first total (101 → first viewers message): p50 {ms(pct(first, 50))}"
          f"  p99 {ms(pct(first, 99))}  max {ms(first[-1] if first else math.nan)}; opened "
          f"but never got one: {f['without_message']}")
    if f["drop_times"]:
        times, lives = f["drop_times"], f["drop_lifetimes"]
        print(f"   drops: at {times[0]:.1f}–{times[-1]:.1f} s after the ramp began (p50 "
              f"{pct(times, 50):.1f} s); connected for {lives[0]:.1f}–{lives[-1]:.1f} s (p50 "
              f"{pct(lives, 50):.1f} s) before the server closed them")
    steps = f["steps"]
    spans = sorted(last - first for first, last, _ in steps)
    print(f"   churn: {f['changes']} changes in {len(steps)} steps (joins/leaves of 1–"
          f"{args.churn_size} viewers every ~{args.churn_every:.1f} s; a step's "
          f"changes spread over p50 {ms(pct(spans, 50))}, max {ms(spans[-1] if spans else math.nan)}"
          f"); churn join failures {f['churn_join_failures'] or 0}, churn drops "
          f"{f['churn_drops'] or 0}")
    d = f["delays"]
    print(f"   update delay, change → kernel arrival at the client ({len(d):,} samples = "
          f"{f['measured']:,} viewers × {f['changes']} changes): p50 {ms(pct(d, 50))}  p95 "
          f"{ms(pct(d, 95))}  p99 {ms(pct(d, 99))}  max {ms(d[-1] if d else math.nan)}; "
          f"never seen {f['unmatched']}")
    s, send, lag, fan = f["server_part"], f["send_part"], f["read_lag"], f["fanout"]
    print(f"     server, change → message ts (flush tick, coalescing, Redis): p50 "
          f"{ms(pct(s, 50))}  p99 {ms(pct(s, 99))}  max {ms(s[-1] if s else math.nan)}")
    print(f"     send, ts → arrival: p50 {ms(pct(send, 50))}  p99 {ms(pct(send, 99))}  max "
          f"{ms(send[-1] if send else math.nan)}; first-to-last arrival of one broadcast: p50 "
          f"{ms(pct(fan, 50))}  max {ms(fan[-1] if fan else math.nan)}")
    print(f"     (not counted) client read lag, arrival → read on CPU {CLIENT_CPU}: p50 "
          f"{ms(pct(lag, 50))}  p99 {ms(pct(lag, 99))}  max {ms(lag[-1] if lag else math.nan)}")
    print(f"   messages: {f['broadcasts']} broadcasts during churn, received {f['received']:,} of "
          f"{f['expected']:,} expected ({f['expected'] - f['received']:,} missing); messages "
          f"during the churn-free hold: {f['hold_messages']}; other messages "
          f"{sum(f['others'].values())} {f['others'] or ''}")
    print(f"   final total: {f['final_ok']}/{n} viewers show {f['expected_final']} "
          f"(expected){'' if f['final_ok'] == n else '; seen: ' + str(f['final_last'].most_common(4))}")
    windows = f["windows"]
    parts = []
    for name in ("baseline", "ramp", "hold", "churn"):
        w = windows[name]
        if w:
            parts.append(f"{name} CPU {w['cpu'] * 100:.0f}% RSS ≤{w['rss_max'] / 2**20:.0f} MiB")
    print(f"   API node: RSS peak (VmHWM) {f['hwm'] / 2**20:.0f} MiB; " + "; ".join(parts)
          + (f"; {windows['churn']['fds']} fds, {windows['churn']['threads']} threads"
             if windows["churn"] else ""))
    for name in ("baseline", "hold", "churn"):
        w = windows[name]
        if w:
            proxies = ", ".join(f"{k} {v * 100:.0f}%" for k, v in w["proxies"].items())
            cores = ", ".join(f"{k} {v * 100:.0f}%" for k, v in sorted(w["cores"].items()))
            rest_of_core = w["cores"].get(f"cpu{SERVER_CPU}", math.nan) - w["cpu"]
            print(f"     {name}: cores busy {cores}; on CPU {SERVER_CPU} the API node "
                  f"{w['cpu'] * 100:.0f}%, everything else {rest_of_core * 100:.0f}% (other "
                  f"work on this machine, unpinned nginx/redis); nginx/redis (any core) "
                  f"{proxies}")
    for name in ("baseline", "hold", "churn"):
        r = f["rest"][name]
        label = "before any viewer (baseline)" if name == "baseline" else f"during {name}"
        print(f"   REST {args.rest_rate:.0f}/s {label}: {r['count']} requests, p50 "
              f"{ms(r['p50'])}  p95 {ms(r['p95'])}  p99 {ms(r['p99'])}  max {ms(r['max'])}  "
              f"errors {r['errors'] or 0}")
        print("     p95 by route: " + "; ".join(f"{route} {ms(p95)} ({count})" for route, (count, p95)
                                                in r["routes"].items()))
    if args.details:
        print("   per change: at (s into churn), step, +join/-leave, expected total, server wait "
              "(change → ts), delay over viewers p50 / max")
        for at, direction, total, step, wait, spread in f["details"]:
            print(f"     {at:6.2f} s  step {step:>3}  {'+' if direction > 0 else '-'}  {total}  "
                  f"server {ms(wait):>8}  delay p50 {ms(pct(spread, 50)):>8}  max "
                  f"{ms(spread[-1] if spread else math.nan):>8}")
    for phase, profile in f["profile"].items():
        print(f"   py-spy, the API node's event loop thread during {phase} ({profile['samples']} "
              "samples at 100/s; share of samples with the function on the stack; "
              "EpollSelector.select = idle):")
        for name, share in profile["top"]:
            print(f"     {share * 100:5.1f}%  {name}")
    v = f["verdicts"]
    r = f["rest"]["all"]
    print(f"   targets: {n} held {'yes' if v['held'] else 'NO'}; p99 delay "
          f"{ms(pct(d, 99))} < 1 s {'yes' if v['delay'] else 'NO'}; RSS "
          f"{f['hwm'] / 2**20:.0f} MiB < 1 GiB {'yes' if v['rss'] else 'NO'}; "
          + (f"REST p95 {ms(r['p95'])} < 50 ms {'yes' if v['rest'] else 'NO'}"
             if args.rest_rate else "no REST load (--rest-rate 0)") + " → "
          f"{'MET' if f['ok'] else 'NOT MET'}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=4,
                        help=f"client processes (more if one would hold > {MAX_PER_PROCESS})")
    parser.add_argument("--seconds", type=float, default=30, help="churn phase")
    parser.add_argument("--hold", type=float, default=10, help="churn-free hold before it")
    parser.add_argument("--baseline", type=float, default=10,
                        help="REST alone before the ramp (the machine's own noise)")
    parser.add_argument("--via", choices=("edge", "api"), default="edge")
    parser.add_argument("--ramp-rate", type=float, default=500, help="connections/s")
    parser.add_argument("--rest-rate", type=float, default=200, help="REST requests/s")
    parser.add_argument("--churn-every", type=float, default=2.0)
    parser.add_argument("--churn-size", type=int, default=5, help="at most this many per step")
    parser.add_argument("--ladder", action="store_true",
                        help=f"try {', '.join(map(str, LADDER))} (up to --viewers), each on a "
                        "fresh stack")
    parser.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--details", action="store_true", help="print every churn change")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy (if installed in .venv) on the API node: ramp, hold, churn")
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    raise_nofile()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a run took longer than --timeout {args.timeout:.0f} s")

    signal.signal(signal.SIGALRM, timeout)
    sizes = [s for s in LADDER if s <= args.viewers] if args.ladder else [args.viewers]
    load = os.getloadavg()
    try:  # read-only: which server code was measured
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sf", "conf", "sql"],
                               cwd=ROOT, text=True, capture_output=True, timeout=10).stdout
        version = f"commit {commit or '?'}" + (
            f" + uncommitted changes in {len(dirty.splitlines())} server files"
            if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    print(f"# SF live-viewers WebSocket benchmark: {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start (other work on this machine shares "
          f"both cores); open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} per "
          f"process; via {args.via}; server code {version}")
    sys.stdout.flush()
    outcomes = []
    for size in sizes:
        signal.alarm(int(args.timeout))
        try:
            figures = Run(args, size).execute()
        finally:
            signal.alarm(0)
        outcomes.append(figures)
    if len(outcomes) > 1:
        print("== summary: N, held, p99 update delay, API node RSS peak, REST p95 (baseline → "
              "connected), API node CPU during churn")
        for f in outcomes:
            v, churn = f["verdicts"], f["windows"]["churn"]
            print(f"   {f['n']:>6}  held {'yes' if v['held'] else 'NO ':<3}  p99 "
                  f"{ms(pct(f['delays'], 99)):>8} {'ok' if v['delay'] else 'NO'}  RSS "
                  f"{f['hwm'] / 2**20:5.0f} MiB {'ok' if v['rss'] else 'NO'}  REST p95 "
                  f"{ms(f['rest']['baseline']['p95'])} → {ms(f['rest']['all']['p95'])} "
                  f"{'ok' if v['rest'] else 'NO'}  CPU "
                  f"{churn['cpu'] * 100 if churn else math.nan:.0f}%")
    met = [f["n"] for f in outcomes if f["ok"]]
    tried = ", ".join(f"{f['n']} {'met' if f['ok'] else 'missed'}" for f in outcomes)
    print(f"largest N that held all targets: {max(met) if met else 'none'} "
          f"(tried: {tried}; via {args.via})")
    return 0 if len(met) == len(outcomes) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process this bench started has been stopped", file=sys.stderr)
        sys.exit(130)
