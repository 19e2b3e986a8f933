"""Chaos benchmark: faults injected under a steady load, with recovery times and lost rows.

Starts everything it disrupts itself, isolated from the shared services: a PostgreSQL cluster
of its own (initdb into a temporary directory, port 17532), a redis-server of its own (17579,
append-only file as `sf services` renders it), nginx (HTTP 17500, RTMP 17503) in front of TWO
API nodes (`sf serve`, one process each, on 17501 and 17511; node A takes the nginx-rtmp
callbacks, so it runs the stream's transcoder), the migrations, and an FFmpeg publisher
(640x360 testsrc2, ultrafast) pushing one live stream. Then, for --minutes, it keeps up

- a steady request loop (--rate per second on an open-loop schedule, through nginx): anonymous
  stream and category lists and public profiles, a signed-in user's own profile, and
  follow / unfollow writes whose acknowledged outcome is remembered pair by pair;
- a few viewer WebSockets on the live stream, reconnecting whenever they are closed;
- a watch on the stream's HLS playlist (it must keep advancing);

and injects, evenly spaced with settle time between them: SIGKILL of the stream's FFmpeg
transcoder, SIGKILL + start of Redis, `pg_ctl stop -m fast` + start of PostgreSQL, and SIGTERM +
start of API node B. For each fault it prints the recovery time (until its check passes again:
the HLS playlist advancing with a new transcoder; both nodes ready and answering signed-in and
anonymous requests; node B serving again). At the end it prints total and failed requests (by
fault window, status and kind), availability, each recovery time, follow rows acknowledged vs.
found in PostgreSQL (lost rows, unexpected rows, followers_count drift), viewer reconnects,
HLS stalls, and the verdict against the targets: each recovery under 10 s, no row lost, failed
requests only while PostgreSQL was down, >= 99.9% of requests answered.

    .venv/bin/python bench/chaos.py [--minutes 10] [--quick] [--rate 20] [--viewers 4] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import tornado.httpclient  # noqa: E402
import tornado.websocket  # noqa: E402

from bench.api import Connection  # noqa: E402
from bench.harness import http, log  # noqa: E402
from sf.config import ensure_secrets, load_config  # noqa: E402
from sf.media import nginx  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402
from sf.media.process import stop as stop_process  # noqa: E402
from sf.node.localservices import LocalPostgres, LocalRedis, port_open  # noqa: E402

HTTP_PORT, CONTROL_PORT, RTMP_PORT, MEDIA_HTTP_PORT = 17500, 17502, 17503, 17506
NODE_PORTS = {"A": (17501, 17504), "B": (17511, 17514)}  # (SF_API_PORT, SF_API_INTERNAL_PORT)
PG_PORT, REDIS_PORT = 17532, 17579
DATABASE = "sf_chaos"
FOLLOWERS, TARGETS = 10, 30
RECOVERY_TARGET, AVAILABILITY_TARGET = 10.0, 99.9
RECOVERY_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
GRACE = 2.0  # a failure this long after a fault's recovery still belongs to it (in flight)
# (kind, weight, expected status)
MIX = [("streams", 25, 200), ("categories", 10, 200), ("user", 15, 200), ("profile", 25, 200),
       ("write", 25, 204)]
EXPECTED = {kind: status for kind, _, status in MIX} | {"follow": 204, "unfollow": 204}


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `check()` passed, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def media_playlist(text: str) -> tuple[int, list[str]]:
    """(#EXT-X-MEDIA-SEQUENCE, segment URIs) of an HLS media playlist."""
    sequence, segments = -1, []
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line and not line.startswith("#"):
            segments.append(line)
    return sequence, segments


# --- the stack: everything the faults touch, started here ---------------------------------------

class Stack:
    """Own PostgreSQL cluster, Redis server, nginx, API nodes A and B, and the publisher."""

    def __init__(self, work: Path) -> None:
        self.work = work
        var = work / "var"
        ensure_secrets(var)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
        self.env = {
            **inherited,
            "SF_VAR_DIR": str(var), "SF_MEDIA_DIR": str(work / "media"),
            "SF_DATABASE_URL": f"postgresql://sf@127.0.0.1:{PG_PORT}/{DATABASE}",
            "SF_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
            "SF_HTTP_PORT": str(HTTP_PORT), "SF_RTMP_PORT": str(RTMP_PORT),
            "SF_MEDIA_CONTROL_PORT": str(CONTROL_PORT), "SF_API_PROCESSES": "1",
            "SF_MEDIA_HTTP_PORT": str(MEDIA_HTTP_PORT),
            # The edge balances over both API nodes (node A takes the RTMP callbacks).
            "SF_EDGE_API_SERVERS": ",".join(f"127.0.0.1:{api}" for api, _ in NODE_PORTS.values()),
            "SF_RATE_LIMIT_ANONYMOUS": "100000000", "SF_RATE_LIMIT_USER": "100000000",
            "SF_RATE_LIMIT_AUTH_IP": "100000000", "SF_RATE_LIMIT_AUTH_ACCOUNT": "100000000",
            "SF_BCRYPT_ROUNDS": "4", "SF_ACCESS_TOKEN_TTL": "7200",
            "SF_TRANSCODE_PRESET": "ultrafast", "SF_LOG_LEVEL": "INFO", "SF_ENV": "production",
        }
        self.config = load_config(self.node_env("A"))
        self.postgres = LocalPostgres(self.config)
        self.redis = LocalRedis(self.config)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.front: nginx.Front | None = None
        self.publisher: subprocess.Popen[bytes] | None = None
        self.stream_key = ""

    def node_env(self, name: str) -> dict[str, str]:
        api_port, internal_port = NODE_PORTS[name]
        return {**self.env, "SF_API_PORT": str(api_port),
                "SF_API_INTERNAL_PORT": str(internal_port), "SF_NODE_ID": f"chaos-{name}"}

    def start(self) -> None:
        busy = [port for port in (HTTP_PORT, CONTROL_PORT, RTMP_PORT, MEDIA_HTTP_PORT, PG_PORT,
                                  REDIS_PORT,
                                  *(p for pair in NODE_PORTS.values() for p in pair))
                if port_open(port)]
        if busy:
            raise RuntimeError(f"ports already in use: {busy} (another chaos run?)")
        log(f"PostgreSQL cluster in {self.postgres.data_dir}")
        self.postgres.start()
        self.redis.start()
        migrated = subprocess.run([sys.executable, "-m", "sf.app", "migrate"],
                                  env=self.node_env("A"), cwd=ROOT, capture_output=True, text=True)
        if migrated.returncode != 0:
            raise RuntimeError(f"sf migrate failed: {migrated.stderr[-2000:]}")
        self.front = nginx.Front(self.config).start()
        for name in NODE_PORTS:
            self.start_node(name)
        for name in NODE_PORTS:
            if poll(functools.partial(self.node_ready, name), 60, 0.2) is None:
                raise RuntimeError(f"API node {name} did not become ready: {self.log_tail(name)}")

    def start_node(self, name: str) -> None:
        output = open(self.work / f"api-{name}.log", "ab")  # noqa: SIM115 (the child holds it)
        try:
            self.nodes[name] = subprocess.Popen(
                [sys.executable, "-m", "sf.app", "serve"], env=self.node_env(name), cwd=ROOT,
                stdout=output, stderr=output, stdin=subprocess.DEVNULL,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        finally:
            output.close()

    def stop_node(self, name: str, timeout: float = 30) -> float:
        """SIGTERM and wait; the seconds the node took to exit (killed after `timeout`)."""
        process = self.nodes[name]
        start = time.monotonic()
        stop_process(process, timeout=timeout)
        return time.monotonic() - start

    def node_url(self, name: str) -> str:
        return f"http://127.0.0.1:{NODE_PORTS[name][0]}"

    def node_ready(self, name: str) -> bool:
        process = self.nodes[name]
        if process.poll() is not None:
            raise RuntimeError(f"API node {name} exited ({process.returncode}): "
                               f"{self.log_tail(name)}")
        return http(self.node_url(name) + "/readyz", timeout=2)[0] == 200

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            text = (self.work / f"api-{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def publish(self, seconds: float) -> None:
        """The streamer's encoder: testsrc2 + a tone as H.264/AAC over RTMP, in real time."""
        self.publisher = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=20",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-t", str(int(seconds)), "-c:v", "libx264", "-preset", "ultrafast",
             "-tune", "zerolatency", "-g", "20", "-pix_fmt", "yuv420p", "-c:a", "aac",
             "-b:a", "64k", "-f", "flv", f"rtmp://127.0.0.1:{RTMP_PORT}/live/{self.stream_key}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent)

    def transcoder_pids(self, stream_id: int) -> list[int]:
        """The FFmpeg processes pulling the stream (not the publisher, which pushes)."""
        result = subprocess.run(["pgrep", "-f", "--", f"-i rtmp://127.0.0.1:{RTMP_PORT}"
                                 f"/live/{stream_id}( |$)"], capture_output=True, text=True)
        return [int(pid) for pid in result.stdout.split()]

    def kill_redis(self) -> None:
        """SIGKILL the Redis server (a crash: no shutdown save, the AOF is what survives)."""
        pid = int(self.redis.pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        if poll(lambda: not port_open(REDIS_PORT), 10, 0.05) is None:
            raise RuntimeError("Redis still accepts connections after SIGKILL")
        # The daemon is not our child: nobody may reap it, and a zombie still answers kill(0).
        self.redis.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.publisher and self.publisher.poll() is None:
            self.publisher.kill()
            self.publisher.wait()
        for name in list(self.nodes):
            self.stop_node(name)
        if self.front is not None:
            self.front.stop()
        if self.redis.pid_file.exists():
            self.redis.stop()
        self.postgres.stop()

    def node_warnings(self) -> Counter[str]:
        """WARNING/ERROR lines of both nodes' logs, by message."""
        found: Counter[str] = Counter()
        for name in NODE_PORTS:
            try:
                lines = (self.work / f"api-{name}.log").read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    if line.strip():
                        found[f"{name} raw: {line[:110]}"] += 1
                    continue
                if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR",
                                                                         "CRITICAL"):
                    message = str(record.get("message", "")).replace("\n", " ")[:110]
                    found[f"{name} {record['level']}: {message}"] += 1
        return found


# --- the load, on an asyncio loop in a thread of its own ------------------------------------------

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


# --- faults -----------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str
    started: float = 0.0            # time.time()
    service_back: float = 0.0       # the disrupted process was running again (time.time())
    recovered: float | None = None  # its check passed again (time.time())
    back_label: str = "process back"
    notes: list[str] = field(default_factory=list)

    @property
    def recovery(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.started


class Chaos:
    """Runs the stack, the load and the faults; reports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="sf-chaos-"))
        os.chmod(self.work, 0o755)  # the postgres user and nginx's workers reach in
        self.stack = Stack(self.work)
        self.faults: list[Fault] = []
        self.publisher_restarts: list[float] = []
        self.load: Load | None = None

    # set-up

    def api(self, method: str, path: str, body: Any = None, token: str | None = None
            ) -> tuple[int, Any]:
        status, raw = http(f"http://127.0.0.1:{HTTP_PORT}{path}", method, body, token, 15)
        return status, json.loads(raw) if raw else None

    def register(self, username: str) -> dict[str, Any]:
        status, body = self.api("POST", "/api/v1/auth/register", {
            "username": username, "email": f"{username}@example.com", "password": "chaos-pass-1"})
        if status != 201:
            raise RuntimeError(f"register {username}: {status} {body}")
        return {"username": username, "token": body["access_token"], "id": body["user"]["id"]}

    def live_stream(self) -> int | None:
        status, body = self.api("GET", f"/api/v1/users/{self.users.streamer['username']}/streams")
        live = [s["id"] for s in (body or {}).get("data", []) if s.get("is_live")] \
            if status == 200 else []
        return live[0] if live else None

    def go_live(self) -> None:
        """Publish (again) and point the load at the live stream and its media playlist."""
        self.stack.publish(self.args.minutes * 60 + 600)
        stream_id = None

        def is_live() -> bool:
            nonlocal stream_id
            stream_id = self.live_stream()
            return stream_id is not None

        if poll(is_live, 40, 0.5) is None:
            raise RuntimeError("the stream did not go live")
        assert stream_id is not None
        master = ""

        def playlist() -> bool:
            nonlocal master
            status, raw = http(f"http://127.0.0.1:{HTTP_PORT}/hls/{stream_id}/master.m3u8", timeout=5)
            master = raw.decode(errors="replace") if status == 200 else ""
            return "#EXT-X-STREAM-INF" in master

        if poll(playlist, 60, 0.5) is None:
            raise RuntimeError("no HLS master playlist appeared")
        variant = next(line for line in master.splitlines() if line and not line.startswith("#"))
        assert self.load is not None
        self.load.stream_id, self.load.variant = stream_id, variant

    def set_up(self) -> None:
        self.stack.start()
        streamer = self.register("chaos_streamer")
        status, key = self.api("GET", "/api/v1/stream/key", token=streamer["token"])
        if status != 200:
            raise RuntimeError(f"stream key: {status} {key}")
        self.stack.stream_key = key["stream_key"]
        self.users = Users(streamer, [self.register(f"chaos_fan_{i}") for i in range(FOLLOWERS)],
                           [self.register(f"chaos_star_{i}") for i in range(TARGETS)])
        self.load = Load(self.users, self.args.rate, self.args.viewers)
        self.go_live()

    def wait(self, seconds: float) -> None:
        """Sleep, keeping the encoder connected as OBS does (reconnect when it drops)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            publisher = self.stack.publisher
            if publisher is not None and publisher.poll() is not None:
                self.publisher_restarts.append(time.time())
                log(f"the publisher exited ({publisher.returncode}): publishing again")
                self.go_live()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    # checks

    def nodes_serve(self) -> bool:
        """Both nodes ready and answering a signed-in and an anonymous read, directly."""
        token = self.users.followers[0]["token"]
        for name in NODE_PORTS:
            url = self.stack.node_url(name)
            if (http(url + "/readyz", timeout=2)[0] != 200
                    or http(url + "/api/v1/users/profile", token=token, timeout=2)[0] != 200
                    or http(url + "/api/v1/streams", timeout=2)[0] != 200):
                return False
        return True

    def recover(self, fault: Fault, check: Callable[[], bool]) -> None:
        waited = poll(check, RECOVERY_TIMEOUT, 0.1)
        fault.recovered = None if waited is None else time.time()

    # the faults

    def kill_transcoder(self, fault: Fault) -> None:
        assert self.load is not None
        stream_id = self.load.stream_id
        before = self.stack.transcoder_pids(stream_id)
        if not before:
            fault.notes.append("no transcoder was running")
        fault.started = time.time()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        status, raw = http(f"http://127.0.0.1:{HTTP_PORT}/hls/{stream_id}/{self.load.variant}", timeout=5)
        seen = set(media_playlist(raw.decode(errors="replace"))[1]) if status == 200 else set()
        fault.notes.append(f"killed transcoder pid {', '.join(map(str, before))}")

        def new_transcoder() -> bool:
            return any(pid not in before for pid in self.stack.transcoder_pids(stream_id))

        waited = poll(new_transcoder, RECOVERY_TIMEOUT, 0.1)
        if waited is not None:
            fault.service_back = time.time()
            fault.back_label = "new transcoder"

        playlist = f"http://127.0.0.1:{HTTP_PORT}/hls/{stream_id}/{self.load.variant}"

        def advancing() -> bool:
            code, body = http(playlist, timeout=2)
            return code == 200 and bool(set(media_playlist(body.decode())[1]) - seen)

        self.recover(fault, lambda: bool(fault.service_back) and advancing())

    def restart_redis(self, fault: Fault) -> None:
        fault.started = time.time()
        self.stack.kill_redis()
        self.stack.redis.start()
        fault.service_back = time.time()
        fault.notes.append(f"Redis down {fault.service_back - fault.started:.1f} s")
        self.recover(fault, self.nodes_serve)

    def restart_postgres(self, fault: Fault) -> None:
        fault.started = time.time()
        self.stack.postgres.stop()
        stopped = time.time()
        if self.stack.postgres.running():
            fault.notes.append("pg_ctl stop did not stop the cluster")
        self.stack.postgres.start()
        fault.service_back = time.time()
        fault.notes.append(f"stop took {stopped - fault.started:.1f} s, start "
                           f"{fault.service_back - stopped:.1f} s")
        self.recover(fault, self.nodes_serve)

    def restart_api_node(self, fault: Fault) -> None:
        fault.started = time.time()
        took = self.stack.stop_node("B")
        code = self.stack.nodes["B"].returncode
        fault.notes.append(f"node B exited {code} {took:.1f} s after SIGTERM")
        self.stack.start_node("B")
        fault.service_back = time.time()
        fault.back_label = "started again"
        self.recover(fault, lambda: self.stack.node_ready("B") and self.nodes_serve())

    # the run

    def run(self) -> dict[str, Any]:
        self.set_up()
        assert self.load is not None
        load = self.load
        duration = self.args.minutes * 60
        schedule: list[tuple[str, Callable[[Fault], None]]] = [
            ("ffmpeg_kill", self.kill_transcoder), ("redis_restart", self.restart_redis),
            ("postgres_restart", self.restart_postgres), ("api_node_restart", self.restart_api_node)]
        load.thread.start()
        began = time.monotonic()
        self.began = time.time()
        log(f"load running: {self.args.rate:g} requests/s, {self.args.viewers} viewers of stream "
            f"{load.stream_id}, faults every {duration / (len(schedule) + 1):.0f} s")
        for number, (name, inject) in enumerate(schedule, 1):
            self.wait(max(5.0, began + duration * number / (len(schedule) + 1) - time.monotonic()))
            fault = Fault(name)
            self.faults.append(fault)
            inject(fault)
            recovery = (f"NOT within {RECOVERY_TIMEOUT:.0f} s" if fault.recovery is None
                        else f"{fault.recovery:.1f} s")
            print(f"t+{fault.started - self.began:6.1f}s  {name:<17} recovered in {recovery}"
                  f"  ({'; '.join(fault.notes)})", flush=True)
        self.wait(max(5.0, began + duration - time.monotonic()))
        load.stopping = True
        load.thread.join(timeout=REQUEST_TIMEOUT + 10)
        self.ended = time.time()
        return {"rows": asyncio.run(self.count_rows())}

    async def count_rows(self) -> dict[str, Any]:
        db = await asyncpg.connect(self.stack.config.database_url)
        try:
            fans = [u["id"] for u in self.users.followers]
            stars = [u["id"] for u in self.users.targets]
            rows = await db.fetch("SELECT follower_id, following_id FROM follows "
                                  "WHERE follower_id = ANY($1::bigint[])", fans)
            counts = await db.fetch(
                "SELECT u.id, u.followers_count, (SELECT count(*) FROM follows f "
                "WHERE f.following_id = u.id) AS actual FROM users u WHERE u.id = ANY($1::bigint[])",
                stars)
        finally:
            await db.close()
        return {"found": {(r["follower_id"], r["following_id"]) for r in rows},
                "drift": [(r["id"], r["followers_count"], r["actual"]) for r in counts
                          if r["followers_count"] != r["actual"]]}

    def cleanup(self) -> None:
        if self.load is not None:
            self.load.stopping = True
        self.stack.stop()
        if self.args.keep:
            log(f"kept {self.work} (node logs api-A.log, api-B.log; var/log)")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # the report

    @staticmethod
    def window(fault: Fault) -> tuple[float, float]:
        """From the fault to its recovery (or the recovery timeout), plus in-flight grace."""
        return fault.started - 0.5, (fault.recovered or fault.started + RECOVERY_TIMEOUT) + GRACE

    def window_of(self, moment: float) -> str:
        for fault in self.faults:
            start, end = self.window(fault)
            if start <= moment <= end:
                return fault.name
        return "outside faults"

    def hls_stalls(self) -> dict[str, float]:
        """Longest time without a playlist change overlapping each fault's window, and outside."""
        assert self.load is not None
        times = [moment for moment, _, _ in self.load.hls] + [self.ended]
        longest = {fault.name: 0.0 for fault in self.faults} | {"outside faults": 0.0}
        for before, after in zip(times, times[1:], strict=False):
            names = [fault.name for fault in self.faults
                     if before <= self.window(fault)[1] and after >= self.window(fault)[0]]
            for name in names or ["outside faults"]:
                longest[name] = max(longest[name], after - before)
        return longest

    def report(self, result: dict[str, Any]) -> bool:
        assert self.load is not None
        load, samples = self.load, self.load.samples
        failed = [s for s in samples if not s.ok]
        availability = 100.0 * (len(samples) - len(failed)) / max(1, len(samples))
        latencies = sorted(s.latency for s in samples)

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

        print(f"== requests: {len(samples)} over {self.ended - self.began:.0f} s "
              f"({len(samples) / max(1.0, self.ended - self.began):.1f}/s), {len(failed)} failed "
              f"→ availability {availability:.3f} % (target ≥ {AVAILABILITY_TARGET} %); latency "
              f"p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, max {latencies[-1] * 1000:.0f} ms")
        by_window: dict[str, list[Sample]] = {}
        for sample in failed:
            by_window.setdefault(self.window_of(sample.due), []).append(sample)
        for window in [f.name for f in self.faults] + ["outside faults"]:
            group = by_window.get(window, [])
            if not group:
                print(f"   {window:<17} 0 failed")
                continue
            statuses = Counter(f"{s.status}{'/' + s.error if s.error else ''}" for s in group)
            kinds = Counter(s.kind for s in group)
            first, last = min(s.due for s in group), max(s.due for s in group)
            print(f"   {window:<17} {len(group)} failed, t+{first - self.began:.1f}s to "
                  f"t+{last - self.began:.1f}s; status {dict(statuses)}; kind {dict(kinds)}")
        print("== recoveries (target < 10 s each):")
        for fault in self.faults:
            recovery = "not recovered" if fault.recovery is None else f"{fault.recovery:5.1f} s"
            back = ""
            if fault.service_back:
                back = f", {fault.back_label} after {fault.service_back - fault.started:.1f} s"
                if fault.recovered is not None:
                    back += f", check passed {fault.recovered - fault.service_back:.1f} s later"
            print(f"   {fault.name:<17} {recovery}{back}  ({'; '.join(fault.notes)})")
        rows = self.rows_report(result["rows"])
        drops = [e for e in load.viewer_events if not e[2].startswith("open")]
        opens = sum(1 for e in load.viewer_events if e[2] == "open")
        print(f"== viewers: {load.viewer_count} sockets, {opens} connects "
              f"({max(0, opens - load.viewer_count)} reconnects), {load.viewer_messages} messages; "
              f"closes/failures by window: " + (", ".join(
                  f"{w}: {dict(Counter(e[2] for e in drops if self.window_of(e[0]) == w))}"
                  for w in dict.fromkeys(self.window_of(e[0]) for e in drops)) or "none"))
        print(f"== HLS: playlist changed {len(load.hls)} times; longest stall per window: "
              + ", ".join(f"{name} {gap:.1f} s" for name, gap in self.hls_stalls().items())
              + f"; non-200 answers {dict(load.hls_errors) or 0}; publisher reconnects "
              f"{len(self.publisher_restarts)}")
        warnings = self.stack.node_warnings()
        if warnings:
            print("== node log warnings/errors (top 12):")
            for message, count in warnings.most_common(12):
                print(f"   {count:>5} × {message}")
        recovered = all(f.recovery is not None and f.recovery < RECOVERY_TARGET
                        for f in self.faults)
        only_db = all(window == "postgres_restart" for window in by_window)
        verdicts = {"each recovery < 10 s": recovered, "no rows lost": rows,
                    "failures only while PostgreSQL was down": only_db,
                    f"availability ≥ {AVAILABILITY_TARGET} %": availability >= AVAILABILITY_TARGET}
        met = all(verdicts.values())
        print("== targets: " + "; ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdicts.items())
              + f" → {'MET' if met else 'NOT MET'}", flush=True)
        return met

    def rows_report(self, rows: dict[str, Any]) -> bool:
        """Acknowledged follows vs. the rows in PostgreSQL; True when none was lost."""
        assert self.load is not None
        ids = ([u["id"] for u in self.users.followers], [u["id"] for u in self.users.targets])
        expected = {(ids[0][f], ids[1][t]) for (f, t), state in self.load.follows.items() if state}
        absent = {(ids[0][f], ids[1][t]) for (f, t), state in self.load.follows.items()
                  if state is False}
        unknown = sum(1 for state in self.load.follows.values() if state is None)
        found = rows["found"]
        lost, unexpected = expected - found, absent & found
        print(f"== rows: {self.load.acknowledged['follow']} follows and "
              f"{self.load.acknowledged['unfollow']} unfollows acknowledged; follow rows expected "
              f"at the end {len(expected)}, found {len(found & expected)} → lost {len(lost)}, "
              f"unexpectedly present {len(unexpected)}; {unknown} pairs unknown (last write "
              f"failed); followers_count drift on {len(rows['drift'])} of {len(ids[1])} users"
              + (f" {rows['drift'][:5]}" if rows["drift"] else ""))
        return not lost and not unexpected and not rows["drift"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the loaded run")
    parser.add_argument("--quick", action="store_true", help="a 2-minute smoke run")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s through nginx")
    parser.add_argument("--viewers", type=int, default=4, help="viewer WebSockets")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 2.0

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    load = os.getloadavg()
    print(f"# SF chaos benchmark: {os.cpu_count()} cores, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} at start (shared with other work); {args.minutes:g} min, "
          f"{args.rate:g} requests/s, {args.viewers} viewers, 1 live stream; nginx :{HTTP_PORT} → "
          f"API nodes :{NODE_PORTS['A'][0]} (ingest) and :{NODE_PORTS['B'][0]}; own PostgreSQL "
          f":{PG_PORT} and Redis :{REDIS_PORT}", flush=True)
    chaos = Chaos(args)
    try:
        met = chaos.report(chaos.run())
    except KeyboardInterrupt:
        log("interrupted: stopping every process this bench started")
        return 130
    finally:
        chaos.cleanup()
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
