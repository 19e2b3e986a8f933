"""bench/notify.py's run: one stack (bench/viewers_stack.py's, the edge in front), the followers
set up in bulk, their sockets, the go-live, and the figures (printed by bench/notify_report.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import seed_streams  # noqa: E402
from bench.notify_clients import follower_process  # noqa: E402
from bench.notify_report import report  # noqa: E402
from bench.viewers_clients import MAX_PER_PROCESS, viewer_address  # noqa: E402
from bench.viewers_run import Run, rest_figures  # noqa: E402
from bench.viewers_stack import CLIENT_CPU, Sampler, Stack, pinned  # noqa: E402
from harness.client import publish_command, register, stream_key  # noqa: E402
from harness.measure import children_of, log, process_cpu  # noqa: E402
from sf.redis_client import service_client as open_redis  # noqa: E402
from sf.security import TokenService  # noqa: E402
from sf.services.sessions import SessionStore  # noqa: E402

BENCH_DB = "sf_bench_notify"
TARGET_STORED, TARGET_PUSHED, TARGET_REST_P95 = 10.0, 10.0, 0.050
STREAMER, PASSWORD = "bench_streamer", "bench-password-1"   # the REST load reads its profile
FOLLOWER_PREFIX = "fan_"

# Over viewers_stack's settings: the streamer's account is seconds old, so its stream is served
# source-only (no transcoded ladder taking a core from the fan-out on this 2-core machine).
NOTIFY_SETTINGS: dict[str, str] = {"SF_TRANSCODE_MIN_ACCOUNT_AGE_MINUTES": "525600"}


async def add_followers(database_url: str, streamer_id: int, count: int) -> list[int]:
    """`count` accounts following the streamer, in bulk SQL (the setup shortcut); their ids."""
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(
            # No address: addresses are sealed at rest and optional; these accounts are never
            # mailed or signed into with a password.
            """INSERT INTO users (username, password_hash)
               SELECT $2 || i, 'x' FROM generate_series(1, $1) i""", count, FOLLOWER_PREFIX)
        await db.execute(
            """INSERT INTO follows (follower_id, following_id)
               SELECT id, $1 FROM users WHERE username LIKE $2 || '%' ORDER BY id""",
            streamer_id, FOLLOWER_PREFIX)
        await db.execute(
            """UPDATE users SET followers_count = (SELECT count(*) FROM follows
                                                    WHERE following_id = $1) WHERE id = $1""",
            streamer_id)
        await db.execute("ANALYZE users; ANALYZE follows")
        rows = await db.fetch("SELECT follower_id FROM follows WHERE following_id = $1"
                              " ORDER BY follower_id", streamer_id)
        return [row["follower_id"] for row in rows]
    finally:
        await db.close()


async def mint_sessions(config: Any, user_ids: list[int]) -> list[str]:
    """A signed-in session and access token for each user, made by the platform's own
    SessionStore in the stack's Redis (what a login ends with, without 10,000 bcrypt checks)."""
    redis = open_redis(config.redis_url)
    try:
        store = SessionStore(redis, TokenService(config))
        tokens: list[str] = []
        for first in range(0, len(user_ids), 20):
            issued = await asyncio.gather(*(store.create(uid)
                                            for uid in user_ids[first:first + 20]))
            tokens += [i.access_token for i in issued]
        return tokens
    finally:
        await redis.aclose()


def postgres_pid(database_url: str) -> int | None:
    """The postmaster serving `database_url`'s port (read from /proc), for its CPU."""
    port = str(urllib.parse.urlsplit(database_url).port or 5432)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("postgres") and "-p" in argv \
                and argv[argv.index("-p") + 1:argv.index("-p") + 2] == [port]:
            return int(entry)
    return None


def niced_on_client_core() -> None:
    """The publisher: on the client core, behind the REST generator (it sends in real time,
    -re, and has time to spare; the REST latency is measured in user space)."""
    pinned(CLIENT_CPU)()
    os.nice(10)


class NotifyRun(Run):
    """One run: F followers, N of them connected, one go-live, on a fresh stack."""

    def execute(self) -> dict[str, Any]:  # noqa: PLR0915 (the phases in order, as chat_run)
        args, n = self.args, self.n
        settings = dict(NOTIFY_SETTINGS)
        for item in args.set:
            name, _, value = item.partition("=")
            settings[name] = value
        stack = Stack("edge", database=BENCH_DB, processes=args.api_processes,
                      settings=settings, prefix="sf-bench-notify-")
        sampler: Sampler | None = None
        publisher: subprocess.Popen[bytes] | None = None
        try:
            log(f"starting the stack in {stack.work} ({args.api_processes} API processes); "
                f"settings over the bench's: {settings}")
            stack.start()
            base = f"http://127.0.0.1:{stack.entry_port}"
            streamer = register(base, STREAMER, PASSWORD)
            token, me = streamer["access_token"], streamer["user"]
            key = stream_key(base, token)
            seed_streams({"database_url": stack.env["SF_DATABASE_URL"]})
            started = time.time()
            followers = asyncio.run(add_followers(stack.env["SF_DATABASE_URL"], me["id"],
                                                  args.followers))
            log(f"{len(followers):,} followers inserted in {time.time() - started:.1f} s")
            # The connected ones spread over the whole fan-out (every k-th id), not its first batch.
            every = max(1, len(followers) // max(1, n))
            connected = followers[::every][:n]
            started = time.time()
            tokens = asyncio.run(mint_sessions(stack.config, connected))
            log(f"{len(tokens):,} sessions minted in {time.time() - started:.1f} s")

            proxies = {"nginx": stack.front.processes[0].pid,  # type: ignore[union-attr]
                       "edge": stack.front.processes[1].pid}  # type: ignore[union-attr]
            if stack.redis_process:
                proxies["redis"] = stack.redis_process.pid
            assert stack.server is not None
            affinity = dict(proxies)
            postmaster = postgres_pid(stack.env["SF_DATABASE_URL"])
            if postmaster:  # the shared cluster: its CPU shown, its affinity left alone
                proxies["postgres"] = postmaster
            for pid in [stack.server.pid, *children_of(stack.server.pid),  # as chat_run does
                        *(child for master in affinity.values()
                          for child in [master, *children_of(master)])]:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(pid, range(os.cpu_count() or 2))
            processes = max(args.processes, math.ceil(n / MAX_PER_PROCESS))
            shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
            rest = self.spawn_rest(stack)
            phases: dict[str, float] = {"baseline": time.time() + 0.5}
            phases["baseline_end"] = phases["baseline"] + args.baseline
            rest.send({"start_at": phases["baseline"], "seconds": args.baseline})
            start_at = phases["ramp"] = phases["baseline_end"] + 1.0
            clients, first = [], 0
            for share in shares:
                clients.append(self.spawn(follower_process, {
                    "port": stack.ws_port, "origin": stack.origin,
                    "tokens": tokens[first:first + share],
                    "sources": [viewer_address(first + k) for k in range(share)],
                    "rate": args.ramp_rate * share / n, "start_at": start_at}))
                first += share
            sampler = Sampler(stack.server.pid, proxies, processes=args.api_processes > 1)
            sampler.start()
            log(f"REST alone for {args.baseline:.0f} s, then connecting {n:,} followers at "
                f"{args.ramp_rate:.0f}/s over {processes} processes "
                f"({', '.join(map(str, shares))}) to :{stack.ws_port}{'/ws/notifications'}")

            deadline = start_at + n / args.ramp_rate + 60
            last_print = 0.0
            while True:
                time.sleep(1)
                states = self.ask(clients, "status")
                opened = sum(s["open"] for s in states)
                failed = sum(s["failed"] + s["dropped"] for s in states)
                tickets = sum(sum(s["ticket_failures"].values()) for s in states)
                handshaking = sum(s["handshaking"] for s in states)
                joined = sum(s["joined"] for s in states)
                if time.time() - last_print > 5:
                    log(f"  {time.time() - start_at:5.1f} s: open {opened}, joined {joined}, "
                        f"handshaking {handshaking}, failed/dropped {failed}, ticket failures "
                        f"{tickets}")
                    last_print = time.time()
                if stack.server.poll() is not None:
                    raise RuntimeError(f"the API node died: {stack.log_tail()}")
                settled = (all(s["ramped"] for s in states) and handshaking == 0
                           and opened + failed + tickets >= n and joined >= opened)
                if settled or time.time() > deadline:
                    if not settled:
                        log(f"  ramp did not settle: open {opened}, joined {joined}, failed "
                            f"{failed}, ticket failures {tickets}")
                    break
            phases["ramp_end"] = time.time()
            ramp_status = states
            log(f"connected {opened:,}/{n:,} in {phases['ramp_end'] - start_at:.1f} s")

            # Connected and quiet (the hold), then the go-live; REST throughout.
            phases["hold"] = time.time() + 0.5
            phases["live"] = phases["hold"] + args.hold
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report its baseline")
            rest_results = rest.recv()
            rest.send({"start_at": phases["hold"], "seconds": args.hold + args.window})
            time.sleep(max(0.0, phases["live"] - time.time()))
            cpu_before = self.api_cpu(stack)
            t0 = time.time()
            if args.go_live == "rtmp":
                publisher = subprocess.Popen(
                    publish_command(f"rtmp://127.0.0.1:{stack.config.rtmp_port}/live/{key}",
                                    size="320x180", rate=15, video_bitrate="200k",
                                    audio_bitrate="32k"),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=(stack.work / "publisher.log").open("ab"),
                    preexec_fn=niced_on_client_core)
            else:
                self.on_publish(stack, key)
            phases["t0"] = t0
            log(f"went live ({args.go_live}) at t0; polling the fan-out every 100 ms")
            fanout = asyncio.run(self.watch(stack, t0, args.followers, clients, opened,
                                            args.window))
            cpu_after = self.api_cpu(stack)
            phases["done"] = fanout["done"]
            states = self.ask(clients, "status")
            phases["window_end"] = phases["hold"] + args.hold + args.window
            time.sleep(max(0.0, phases["window_end"] - time.time()))
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report")
            rest_results += rest.recv()
            rest.send(None)
            results = self.ask(clients, "stop", timeout=120)
            sampler.stopping.set()
            sampler.join(timeout=2)
            return self.analyse(n, stack, phases, ramp_status, states, results, rest_results,
                                sampler, fanout, cpu_after - cpu_before, processes, shares)
        finally:
            if sampler is not None:
                sampler.stopping.set()
            if publisher is not None and publisher.poll() is None:
                publisher.kill()
                publisher.wait()
            self.tear_down(stack)

    @staticmethod
    def api_cpu(stack: Stack) -> float:
        """CPU seconds of the API processes so far."""
        assert stack.server is not None
        total = 0.0
        for pid in [stack.server.pid, *children_of(stack.server.pid)]:
            with contextlib.suppress(OSError):
                total += process_cpu(pid)
        return total

    @staticmethod
    def on_publish(stack: Stack, key: str) -> None:
        """nginx-rtmp's on_publish callback, as nginx-rtmp posts it (the internal secret in
        the query), straight to the API (the edge never serves /internal)."""
        query = urllib.parse.urlencode({"secret": stack.config.internal_secret})
        body = urllib.parse.urlencode({"app": "live", "name": key, "addr": "127.0.0.1",
                                       "call": "publish"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{stack.api_port}/internal/rtmp/on_publish?{query}", data=body,
            method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        try:
            urllib.request.build_opener(NoRedirect).open(request, timeout=10)
        except urllib.error.HTTPError as error:
            if error.code != 302:
                raise RuntimeError(f"on_publish: {error.code} {error.read()!r}") from None

    async def watch(self, stack: Stack, t0: float, followers: int, clients: list[Any],
                    connected: int, window: float) -> dict[str, Any]:
        """Poll the fan-out row every 100 ms (one query) and the clients every 0.5 s, until
        every notification is stored and every connected follower has one, or `window`."""
        db = await asyncpg.connect(stack.env["SF_DATABASE_URL"])
        seen: dict[str, Any] = {"planned": None, "stored": None, "pushed": None, "row": None,
                                "progress": []}
        try:
            last_ask = 0.0
            while time.time() < t0 + window:
                row = await db.fetchrow(
                    "SELECT status, notified, created_at, done_at, stream_id"
                    " FROM notification_fanouts ORDER BY id DESC LIMIT 1")
                now = time.time()
                if row is not None:
                    seen["row"] = dict(row)
                    if seen["planned"] is None:
                        seen["planned"] = now
                    seen["progress"].append((now - t0, row["notified"]))
                    if seen["stored"] is None and row["status"] == "done":
                        seen["stored"] = now
                        for pipe in clients:  # which stream the notifications must name
                            self.ask([pipe], "expect", row["stream_id"])
                if now - last_ask >= 0.5:
                    last_ask = now
                    notified = sum(s["notified"] for s in self.ask(clients, "status"))
                    if seen["pushed"] is None and notified >= connected:
                        seen["pushed"] = time.time()
                if seen["stored"] is not None and seen["pushed"] is not None:
                    break
                await asyncio.sleep(max(0.0, 0.1 - (time.time() - now)))
            count = await db.fetchval("SELECT count(*) FROM notifications WHERE type ="
                                      " 'stream.online'")
        finally:
            await db.close()
        seen["rows"] = count
        ends = [t for t in (seen["stored"], seen["pushed"]) if t is not None]
        seen["done"] = max(ends) if len(ends) == 2 else t0 + window
        return seen

    # --- figures ----------------------------------------------------------------------------------

    def analyse(self, n: int, stack: Stack, phases: dict[str, float], ramp_status: list[Any],
                states: list[Any], results: list[dict[str, Any]],
                rest_results: list[tuple[float, float, int, str]], sampler: Sampler,
                fanout: dict[str, Any], cpu_seconds: float, processes: int,
                shares: list[int]) -> dict[str, Any]:
        args, t0 = self.args, phases["t0"]
        arrivals = array("d")
        for result in results:
            arrivals.frombytes(result["arrivals"])
        pushed = sorted(a - t0 for a in arrivals)
        opened_at_ramp = sum(s["open"] for s in ramp_status)
        failures: Counter[str] = Counter()
        tickets: Counter[str] = Counter()
        for s in ramp_status:
            failures.update(s["failures"])
            failures.update(s["drops"])
            tickets.update(s["ticket_failures"])
        missing = sum(r["open_missing"] + r["dropped_missing"] for r in results)
        dropped = sum(r["dropped_missing"] for r in results)
        row = fanout["row"] or {}
        stored = fanout["stored"] - t0 if fanout["stored"] else math.nan
        stored_server = (row["done_at"].timestamp() - t0 if row.get("done_at") else math.nan)
        planned = (row["created_at"].timestamp() - t0 if row.get("created_at") else math.nan)
        done = max(phases["done"], t0 + 1.0)
        rest = {"baseline": rest_figures(rest_results, phases["baseline"], phases["baseline_end"]),
                "connected": rest_figures(rest_results, phases["hold"], t0),
                "fanout": rest_figures(rest_results, t0, done),
                "after": rest_figures(rest_results, done, phases["window_end"])}
        windows = {"baseline": sampler.window(phases["baseline"], phases["baseline_end"]),
                   "connected": sampler.window(phases["hold"], t0),
                   "fanout": sampler.window(t0, done)}
        all_pushed = pushed[-1] if pushed and not missing else math.nan
        verdicts = {
            "stored": row.get("notified") == args.followers and stored <= TARGET_STORED,
            "pushed": bool(pushed) and not missing and all_pushed <= TARGET_PUSHED,
            "missing": opened_at_ramp > 0 and missing == 0,
            "connected": opened_at_ramp == n,
            "rest": rest["fanout"]["count"] > 0 and not rest["fanout"]["errors"]
            and rest["fanout"]["p95"] <= TARGET_REST_P95,
        }
        figures = {
            "n": n, "processes": processes, "shares": shares, "opened_at_ramp": opened_at_ramp,
            "ramp_seconds": phases["ramp_end"] - phases["ramp"], "failures": dict(failures),
            "ticket_failures": dict(tickets), "open_at_end": sum(s["open"] for s in states),
            "pushed": pushed, "missing": missing, "dropped_missing": dropped,
            "duplicates": sum(r["duplicates"] for r in results),
            "wrong_stream": sum(r["wrong_stream"] for r in results),
            "stored": stored, "stored_server": stored_server, "planned": planned,
            "notified": row.get("notified"), "status": row.get("status"), "rows": fanout["rows"],
            "progress": fanout["progress"], "all_pushed": all_pushed,
            "cpu_seconds": cpu_seconds, "fanout_seconds": done - t0, "hwm": sampler.hwm(),
            "windows": windows, "rest": rest, "verdicts": verdicts,
            "ok": all(verdicts.values()),
        }
        report(figures, stack, args)
        return figures
