"""bench/viewers.py's runs: one stack, the client processes, the phases, and the figures."""

from __future__ import annotations

import argparse
import math
import multiprocessing
import signal
import sys
import time
from bisect import bisect_left
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import seed_streams  # noqa: E402
from bench.viewers_clients import (  # noqa: E402
    MAX_PER_PROCESS,
    churn_process,
    client_process,
    rest_process,
    viewer_address,
)
from bench.viewers_report import report  # noqa: E402
from bench.viewers_stack import Profiler, Sampler, Stack  # noqa: E402
from harness.client import register  # noqa: E402
from harness.measure import log, process_status  # noqa: E402
from harness.measure import percentile_sorted as pct  # noqa: E402

TARGET_DELAY_P99, TARGET_RSS, TARGET_REST_P95 = 1.0, 1 << 30, 0.050


def rest_figures(rest_results: list[tuple[float, float, int, str]], start: float,
                 end: float) -> dict[str, Any]:
    """Latency figures of the REST requests due in [start, end) (rest_process's results)."""
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

    def spawn_rest(self, stack: Stack) -> Any:
        """The REST load (through the public port): the directory, the streamer's profile and
        the seeded users' profiles, at --rest-rate requests a second."""
        return self.spawn(rest_process, {
            "port": stack.entry_port, "rate": self.args.rest_rate, "connections": 32,
            "paths": ["/api/streams", "/api/users/bench_streamer",
                      *[f"/api/users/live_{i}" for i in range(1, 1001, 7)]]})

    def tear_down(self, stack: Stack) -> None:
        """Stop the clients and the stack, print what the API logged (WARNING and above), and
        remove the stack's files unless --keep."""
        self.cleanup()
        warnings = stack.server_warnings()
        stack.stop()
        if warnings:
            log("API log (WARNING and above), most frequent:")
            for line, count in warnings.most_common(8):
                log(f"  {count:>6} × {line}")
        if self.args.keep:
            log(f"kept {stack.work}")
        else:
            stack.remove()

    def execute(self) -> dict[str, Any]:
        args, n = self.args, self.n
        stack = Stack(args.via)
        sampler: Sampler | None = None
        profiler = Profiler(stack, args.profile)
        try:
            log(f"N={n}: starting the stack in {stack.work}")
            stack.start()
            token = register(f"http://127.0.0.1:{stack.entry_port}", "bench_streamer",
                             "bench-password-1")["access_token"]
            status, stream = stack.call("POST", "/api/streams", {
                "title": "viewers bench", "is_private": False}, token=token)
            assert status == 201, stream
            stream_id = stream["id"]
            seed_streams({"database_url": stack.env["SF_DATABASE_URL"]})
            proxies = {"nginx": stack.front.processes[0].pid, "edge": stack.front.processes[1].pid}
            if stack.redis_process:
                proxies["redis"] = stack.redis_process.pid
            assert stack.server is not None
            processes = max(args.processes or 4, math.ceil(n / MAX_PER_PROCESS))
            shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
            ramp_seconds = n / args.ramp_rate
            rest = self.spawn_rest(stack)
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
                    "origin": stack.origin,
                    "rate": args.ramp_rate * share / n, "start_at": start_at,
                    "sources": sources}))
            churn = self.spawn(churn_process, {
                "stream_id": stream_id, "port": stack.ws_port, "first_address": n + 1000,
                "origin": stack.origin,
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
                        f"{process_status(stack.server.pid)['VmRSS'] / 1024:.0f} MiB")
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
            hwm = process_status(stack.server.pid)["VmHWM"] * 1024
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
                self.tear_down(stack)
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

        rest_baseline = rest_figures(rest_results, phases["baseline"], phases["baseline_end"])
        rest_hold = rest_figures(rest_results, phases["hold"], churn_start)
        rest_churn = rest_figures(rest_results, churn_start, phases["churn_end"])
        rest_all = rest_figures(rest_results, phases["hold"], phases["churn_end"])
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
