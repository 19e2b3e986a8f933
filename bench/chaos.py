"""Chaos benchmark: one fault a minute under a steady load, with availability, recovery
times and lost rows (issue 24: >= 99.9 % of requests answered, every recovery under 10 s, no row
lost).

Starts everything it disrupts itself (bench/chaos_stack.py), isolated from the shared services
and on ports reserved for the run (harness.ports): a PostgreSQL cluster of its own (initdb into
a temporary directory); Redis as a Sentinel group (harness/sentinel.py: a primary, a replica and
three redis-sentinels; every node's SF_REDIS_URL is the group's redis+sentinel:// URL); the
public edge (nginx, as `sf edge`) in front of TWO API nodes (`sf serve`, one process each) and
the origins of TWO media nodes (`sf node --no-edge`: nginx-rtmp, origin, one API process, the
transcoders); an RTMP balancer (nginx's TCP proxy, round robin) in front of the media nodes;
the migrations; and an FFmpeg publisher (640x360 testsrc2, ultrafast) pushing one live stream
through the balancer and, as OBS does, connecting again (every second) whenever it is cut off.
Then, for --minutes, it keeps up

- a steady request loop (--rate per second on an open-loop schedule, through the edge):
  anonymous stream and category lists and public profiles, a signed-in user's own profile, and
  follow / unfollow writes whose acknowledged outcome is remembered pair by pair;
- a few viewer WebSockets on the live stream, reconnecting whenever they are closed;
- a watch on the stream's HLS playlist through the edge (it must keep advancing);

and injects one fault every --interval seconds (60; the first half an interval in), cycling
through: SIGKILL of the stream's FFmpeg transcoder (recovered: a new transcoder and the playlist
advancing); SIGKILL of the Redis primary (the sentinels promote the replica: that failover time
is printed apart from the recovery, both API nodes answering signed-in and anonymous requests
again and the edge answering a signed-in one; the old primary is then started again as a
replica in the background); `pg_ctl stop -m fast` + start of PostgreSQL (both nodes serving
again); SIGTERM + start of API node B (node B serving again); SIGKILL of the media node holding
the stream, nginx, API process and FFmpeg at once (recovered: the stream live again on the
other media node, resumed by the reconnecting publisher once the node it left is gone
(a missed heartbeat and a refused control port), and its playlist advancing through the
edge; the killed node is started again afterwards). At the end it prints total and failed
requests (by fault window, status and kind), availability, each recovery time and each fault
kind's, follow rows acknowledged vs. found in PostgreSQL (lost rows, unexpected rows,
followers_count drift), viewer reconnects, HLS stalls, node log warnings, and the verdict
against the targets: availability >= 99.9 %, each recovery under 10 s, no row lost.

Every node runs with the default SF_MEDIA_NODE_HEARTBEAT_TTL (6 s) and SF_SWEEP_INTERVAL (5 s):
the reconnecting publisher takes its stream over on the other media node as soon as the dead
one missed a heartbeat and refuses connections (2.5 s after its last heartbeat), not
when its heartbeat expires.

    .venv/bin/python bench/chaos.py [--minutes 10] [--interval 60] [--quick] [--rate 20]
                                    [--viewers 4] [--keep]

--quick: 2.5 minutes, one fault of each kind every 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
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

from bench.chaos_load import REQUEST_TIMEOUT, Load, Sample, Users  # noqa: E402
from bench.chaos_stack import (  # noqa: E402
    BALANCER_PORT,
    HTTP_PORT,
    MEDIA_PORTS,
    NODE_PORTS,
    PG_PORT,
    Stack,
    media_playlist,
    poll,
)
from harness.client import http, register  # noqa: E402
from harness.measure import log, percentile_sorted  # noqa: E402

FOLLOWERS, TARGETS = 10, 30
RECOVERY_TARGET, AVAILABILITY_TARGET = 10.0, 99.9
RECOVERY_TIMEOUT = 30.0
GRACE = 2.0  # a failure this long after a fault's recovery still belongs to it (in flight)


def run_tokens(segments: set[str]) -> set[str]:
    """The transcoder runs that made these segments (seg_<run token>_<n>.ts, sf/media/ffmpeg.py)."""
    return {match.group(1) for name in segments
            if (match := re.search(r"seg_([0-9a-f]+)_[0-9]+\.ts", name))}


# --- faults -----------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str
    started: float = 0.0            # time.time()
    service_back: float = 0.0       # the disrupted process was running again (time.time())
    recovered: float | None = None  # its check passed again (time.time())
    back_label: str = "process back"
    failover: float | None = None   # Redis: seconds until the sentinels' new primary took writes
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
        self.stopping = False

    # set-up

    def api(self, method: str, path: str, body: Any = None, token: str | None = None
            ) -> tuple[int, Any]:
        status, raw = http(f"http://127.0.0.1:{HTTP_PORT}{path}", method, body, token, 15)
        return status, json.loads(raw) if raw else None

    def register(self, username: str) -> dict[str, Any]:
        body = register(f"http://127.0.0.1:{HTTP_PORT}", username, "chaos-pass-1")
        return {"username": username, "token": body["access_token"], "id": body["user"]["id"]}

    def live_stream(self) -> int | None:
        status, body = self.api("GET", f"/api/v1/users/{self.users.streamer['username']}/streams")
        live = [s["id"] for s in (body or {}).get("data", []) if s.get("is_live")] \
            if status == 200 else []
        return live[0] if live else None

    def go_live(self) -> None:
        """Publish and point the load at the live stream and its media playlist."""
        self.stack.publish(self.args.minutes * 60 + 600)
        stream_id = None

        def is_live() -> bool:
            nonlocal stream_id
            stream_id = self.live_stream()
            publisher = self.stack.publisher
            if stream_id is None and publisher is not None and publisher.poll() is not None:
                self.stack.publish(self.args.minutes * 60 + 600)  # refused: connect again
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

    def keep_publishing(self) -> None:
        """The encoder, as OBS with "automatically reconnect": whenever the publisher exits
        (its media node died, or refused it), connect again through the balancer, once a
        second at most."""
        next_attempt = 0.0
        while not self.stopping:
            publisher = self.stack.publisher
            if (publisher is not None and publisher.poll() is not None
                    and time.monotonic() >= next_attempt):
                self.publisher_restarts.append(time.time())
                next_attempt = time.monotonic() + 1.0
                self.stack.publish(self.args.minutes * 60 + 600)
            time.sleep(0.1)

    def wait(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    # checks

    def nodes_serve(self) -> bool:
        """Both API nodes ready and answering a signed-in and an anonymous read, directly, and
        the edge answering a signed-in one."""
        token = self.users.followers[0]["token"]
        for name in NODE_PORTS:
            url = self.stack.node_url(name)
            if (http(url + "/readyz", timeout=2)[0] != 200
                    or http(url + "/api/v1/users/profile", token=token, timeout=2)[0] != 200
                    or http(url + "/api/v1/streams", timeout=2)[0] != 200):
                return False
        return http(f"http://127.0.0.1:{HTTP_PORT}/api/v1/users/profile", token=token,
                    timeout=2)[0] == 200

    def recover(self, fault: Fault, check: Callable[[], bool]) -> None:
        waited = poll(check, RECOVERY_TIMEOUT, 0.1)
        fault.recovered = None if waited is None else time.time()

    def playlist_segments(self) -> set[str]:
        assert self.load is not None
        status, raw = http(f"http://127.0.0.1:{HTTP_PORT}/hls/{self.load.stream_id}/"
                           f"{self.load.variant}", timeout=5)
        return set(media_playlist(raw.decode(errors="replace"))[1]) if status == 200 else set()

    def advancing(self, seen: set[str]) -> bool:
        """The media playlist, through the edge, lists a segment of a transcoder run none of
        `seen` came from: a new run's output, not a later segment of the killed run (the edge
        may have answered `seen` from a playlist cached up to a second before the fault)."""
        return bool(run_tokens(self.playlist_segments()) - run_tokens(seen))

    # the faults

    def kill_transcoder(self, fault: Fault) -> None:
        assert self.load is not None
        stream_id = self.load.stream_id
        before = self.stack.transcoder_pids(stream_id)
        if not before:
            fault.notes.append("no transcoder was running")
        holder = self.stack.holder(stream_id)
        seen = self.playlist_segments()
        fault.started = time.time()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        fault.notes.append(f"killed transcoder pid {', '.join(map(str, before))} on {holder}")

        def new_transcoder() -> bool:
            return any(pid not in before for pid in self.stack.transcoder_pids(stream_id))

        waited = poll(new_transcoder, RECOVERY_TIMEOUT, 0.1)
        if waited is not None:
            fault.service_back = time.time()
            fault.back_label = "new transcoder"
        self.recover(fault, lambda: bool(fault.service_back) and self.advancing(seen))

    def kill_redis_primary(self, fault: Fault) -> None:
        group = self.stack.redis
        fault.started = time.time()
        old = group.kill_primary()
        try:
            new, failover = group.wait_failover(old)
        except AssertionError:
            fault.notes.append(f"primary :{old} killed; the sentinels promoted none in 30 s")
        else:
            fault.service_back = fault.started + failover
            fault.back_label = "sentinels' failover done"
            fault.failover = failover
            fault.notes.append(f"primary :{old} killed, :{new} promoted")
        self.recover(fault, self.nodes_serve)

        def restart() -> None:  # the next Redis fault needs a replica to fail over to
            started = time.monotonic()
            try:
                group.restart(old)
            except AssertionError as error:
                fault.notes.append(f"old primary not back as a replica: {error}")
                log(f"Redis :{old} did not come back as a replica: {error}")
                return
            fault.notes.append(f"old primary a replica in sync "
                               f"{time.monotonic() - started:.1f} s after its restart")

        threading.Thread(target=restart, daemon=True).start()

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

    def kill_media_node(self, fault: Fault) -> None:
        assert self.load is not None
        stream_id = self.load.stream_id
        holder = poll(lambda: self.stack.holder(stream_id) is not None, 10, 0.2)
        name = self.stack.holder(stream_id) if holder is not None else None
        if name is None:
            fault.notes.append("no media node transcoded the stream: killed none")
            fault.started = time.time()
            return
        other = next(node for node in MEDIA_PORTS if node != name)
        seen = self.playlist_segments()
        fault.started = time.time()
        killed = self.stack.kill_node(name)
        fault.notes.append(f"killed {name} ({killed} processes)")
        offline: list[float] = []

        def resumed() -> bool:
            live = self.live_stream()
            if live is None and not offline:
                offline.append(time.time())
            if live is not None and live != self.load.stream_id:
                fault.notes.append(f"a new stream {live} went live (not resumed)")
                self.load.stream_id = live
            if live is None or not self.stack.transcoder_pids(live, other):
                return False
            if not fault.service_back:
                fault.service_back = time.time()
                fault.back_label = f"live again on {other}"
            return self.advancing(seen)

        self.recover(fault, resumed)
        if offline:
            fault.notes.append(f"taken offline after {offline[0] - fault.started:.1f} s")
        self.stack.start_node(name)
        back = poll(lambda: self.stack.node_ready(name), 60, 0.2)
        fault.notes.append(f"{name} started again, ready in "
                           + (f"{back:.1f} s" if back is not None else "NOT 60 s"))

    # the run

    def run(self) -> dict[str, Any]:
        self.set_up()
        assert self.load is not None
        load = self.load
        duration, interval = self.args.minutes * 60, self.args.interval
        kinds: list[tuple[str, Callable[[Fault], None]]] = [
            ("ffmpeg_kill", self.kill_transcoder), ("redis_primary_kill", self.kill_redis_primary),
            ("postgres_restart", self.restart_postgres), ("api_node_restart", self.restart_api_node),
            ("media_node_kill", self.kill_media_node)]
        count = max(1, int(duration // interval))
        load.thread.start()
        keeper = threading.Thread(target=self.keep_publishing, daemon=True)
        keeper.start()
        began = time.monotonic()
        self.began = time.time()
        log(f"load running: {self.args.rate:g} requests/s, {self.args.viewers} viewers of stream "
            f"{load.stream_id}; {count} faults, one every {interval:g} s")
        for number in range(count):
            name, inject = kinds[number % len(kinds)]
            self.wait(max(5.0, began + interval * (number + 0.5) - time.monotonic()))
            fault = Fault(name)
            self.faults.append(fault)
            inject(fault)
            recovery = (f"NOT within {RECOVERY_TIMEOUT:.0f} s" if fault.recovery is None
                        else f"{fault.recovery:.1f} s")
            failover = "" if fault.failover is None else f", failover {fault.failover:.1f} s"
            print(f"t+{fault.started - self.began:6.1f}s  {name:<18} recovered in {recovery}"
                  f"{failover}  ({'; '.join(fault.notes)})", flush=True)
        self.wait(max(5.0, began + duration - time.monotonic()))
        load.stopping = True
        self.stopping = True
        load.thread.join(timeout=REQUEST_TIMEOUT + 10)
        keeper.join(timeout=5)
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
        self.stopping = True
        if self.load is not None:
            self.load.stopping = True
        self.stack.stop()
        if self.args.keep:
            log(f"kept {self.work} (node logs node-*.log; var/log, M1/var/log, M2/var/log)")
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
            return percentile_sorted(latencies, p) * 1000

        print(f"== requests: {len(samples)} over {self.ended - self.began:.0f} s "
              f"({len(samples) / max(1.0, self.ended - self.began):.1f}/s), {len(failed)} failed "
              f"→ availability {availability:.3f} % (target ≥ {AVAILABILITY_TARGET} %); latency "
              f"p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, max {latencies[-1] * 1000:.0f} ms")
        by_window: dict[str, list[Sample]] = {}
        for sample in failed:
            by_window.setdefault(self.window_of(sample.due), []).append(sample)
        for window in dict.fromkeys([f.name for f in self.faults] + ["outside faults"]):
            group = by_window.get(window, [])
            if not group:
                print(f"   {window:<18} 0 failed")
                continue
            statuses = Counter(f"{s.status}{'/' + s.error if s.error else ''}" for s in group)
            kinds = Counter(s.kind for s in group)
            first, last = min(s.due for s in group), max(s.due for s in group)
            print(f"   {window:<18} {len(group)} failed, t+{first - self.began:.1f}s to "
                  f"t+{last - self.began:.1f}s; status {dict(statuses)}; kind {dict(kinds)}")
        print(f"== recoveries (target < {RECOVERY_TARGET:.0f} s each):")
        for fault in self.faults:
            recovery = "not recovered" if fault.recovery is None else f"{fault.recovery:5.1f} s"
            back = ""
            if fault.failover is not None:
                back += f", sentinels' failover {fault.failover:.1f} s"
            elif fault.service_back:
                back = f", {fault.back_label} after {fault.service_back - fault.started:.1f} s"
            if fault.service_back and fault.recovered is not None:
                back += f", check passed {fault.recovered - fault.service_back:.1f} s later"
            print(f"   t+{fault.started - self.began:5.0f}s {fault.name:<18} {recovery}{back}"
                  f"  ({'; '.join(fault.notes)})")
        print("== recovery by fault kind:")
        for name in dict.fromkeys(fault.name for fault in self.faults):
            of_kind = [f for f in self.faults if f.name == name]
            times = ", ".join("—" if f.recovery is None else f"{f.recovery:.1f}" for f in of_kind)
            worst = max((f.recovery for f in of_kind if f.recovery is not None), default=None)
            failovers = [f.failover for f in of_kind if f.failover is not None]
            print(f"   {name:<18} {len(of_kind)}×: {times} s"
                  + (f" (max {worst:.1f} s)" if worst is not None else "")
                  + (f"; sentinels' failover {', '.join(f'{x:.1f}' for x in failovers)} s"
                     if failovers else ""))
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
        kinds = {fault.name for fault in self.faults}
        verdicts = {f"availability ≥ {AVAILABILITY_TARGET} %": availability >= AVAILABILITY_TARGET,
                    f"each recovery < {RECOVERY_TARGET:.0f} s": recovered, "no row lost": rows,
                    f"every fault kind injected ({len(kinds)} of 5)": len(kinds) == 5}
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
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between two faults (the first half of it in)")
    parser.add_argument("--quick", action="store_true",
                        help="a 2.5-minute smoke run: one fault of each kind, every 30 s")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s through nginx")
    parser.add_argument("--viewers", type=int, default=4, help="viewer WebSockets")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.interval = 2.5, 30.0

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    load = os.getloadavg()
    print(f"# SF chaos benchmark: {os.cpu_count()} cores, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} at start (shared with other work); {args.minutes:g} min, "
          f"{args.rate:g} requests/s, {args.viewers} viewers, 1 live stream; edge :{HTTP_PORT} → "
          f"API nodes :{NODE_PORTS['A'][0]}, :{NODE_PORTS['B'][0]} and media nodes "
          + ", ".join(f":{ports['SF_MEDIA_HTTP_PORT']}" for ports in MEDIA_PORTS.values())
          + f"; RTMP balancer :{BALANCER_PORT} → "
          + ", ".join(f":{ports['SF_RTMP_PORT']}" for ports in MEDIA_PORTS.values())
          + f"; own PostgreSQL :{PG_PORT}, Redis Sentinel group", flush=True)
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

