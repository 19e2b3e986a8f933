"""bench/chat.py's run: one stack (two API processes behind the edge), the reader, sender and
REST processes, the phases, and the figures (printed by bench/chat_report.py)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import seed_streams  # noqa: E402
from bench.chat_clients import reader_process, sender_process  # noqa: E402
from bench.chat_report import report  # noqa: E402
from bench.viewers_clients import MAX_PER_PROCESS, viewer_address  # noqa: E402
from bench.viewers_run import Run, rest_figures  # noqa: E402
from bench.viewers_stack import Sampler, Stack  # noqa: E402
from harness.client import call, register  # noqa: E402
from harness.measure import children_of, log  # noqa: E402
from harness.measure import percentile_sorted as pct  # noqa: E402

BENCH_DB = "sf_bench_chat"
TARGET_DELAY_P99, TARGET_RSS, TARGET_REST_P95 = 1.0, 3 << 29, 0.050  # 1 s, 1.5 GiB, 50 ms
SENDER_PASSWORD = "bench-password-1"

# Settings over viewers_stack's for a chat run (its own lift the REST and sign-in limits; the
# readers and senders come from addresses of their own, so the per-address socket limits stay).
CHAT_SETTINGS: dict[str, str] = {}


class ChatRun(Run):
    """One run: N readers and S senders of one stream's `/live` socket on a fresh stack."""

    def execute(self) -> dict[str, Any]:  # noqa: PLR0915 (the phases in order, as viewers_run)
        args, n = self.args, self.n
        settings = dict(CHAT_SETTINGS)
        for item in args.set:
            name, _, value = item.partition("=")
            settings[name] = value
        stack = Stack(args.via, database=BENCH_DB, processes=args.api_processes,
                      settings=settings, prefix="sf-bench-chat-")
        sampler: Sampler | None = None
        try:
            log(f"N={n}: starting the stack in {stack.work} ({args.api_processes} API processes)")
            stack.start()
            base = f"http://127.0.0.1:{stack.entry_port}"
            token = register(base, "bench_streamer", SENDER_PASSWORD)["access_token"]
            status, stream = stack.call("POST", "/api/streams", {
                "title": "chat bench", "is_private": False}, token=token)
            assert status == 201, stream
            stream_id = stream["id"]
            self.open_chat(base, token)
            seed_streams({"database_url": stack.env["SF_DATABASE_URL"]})
            log(f"registering {args.senders} senders")
            tokens = [register(base, f"bench_sender_{i}", SENDER_PASSWORD)["access_token"]
                      for i in range(args.senders)]
            proxies = {"nginx": stack.front.processes[0].pid,  # type: ignore[union-attr]
                       "edge": stack.front.processes[1].pid}  # type: ignore[union-attr]
            if stack.redis_process:
                proxies["redis"] = stack.redis_process.pid
            assert stack.server is not None
            # The server side (API processes, both nginx, Redis) free to use both cores, the
            # clients pinned to theirs: started from this process, the server side inherited
            # the client core's affinity and the readers had what was left of it (p99 19 s).
            for pid in [stack.server.pid, *children_of(stack.server.pid),
                        *(child for master in proxies.values()
                          for child in [master, *children_of(master)])]:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(pid, range(os.cpu_count() or 2))
            processes = max(args.processes, math.ceil(n / MAX_PER_PROCESS))
            shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
            every = max(1, n // max(1, args.sample))
            sampled = {viewer_address(k) for k in range(0, n, every)}
            rest = self.spawn_rest(stack)
            phases: dict[str, float] = {"baseline": time.time() + 0.5}
            phases["baseline_end"] = phases["baseline"] + args.baseline
            rest.send({"start_at": phases["baseline"], "seconds": args.baseline})
            start_at = phases["ramp"] = phases["baseline_end"] + 1.0
            readers, first = [], 0
            for share in shares:
                sources = [viewer_address(first + k) for k in range(share)]
                first += share
                readers.append(self.spawn(reader_process, {
                    "stream_id": stream_id, "socket": "live", "port": stack.ws_port,
                    "origin": stack.origin, "count": share, "rate": args.ramp_rate * share / n,
                    "start_at": start_at, "sources": sources,
                    "sampled": {s for s in sources if s in sampled}}))
            senders = self.spawn(sender_process, {
                "stream_id": stream_id, "socket": "live", "port": stack.ws_port,
                "origin": stack.origin, "tokens": tokens, "rate": args.rate,
                "start_at": start_at,
                "sources": [viewer_address(n + 1000 + i) for i in range(args.senders)]})
            sampler = Sampler(stack.server.pid, proxies, processes=args.api_processes > 1)
            sampler.start()
            log(f"REST alone for {args.baseline:.0f} s, then ramping {n} readers at "
                f"{args.ramp_rate:.0f}/s over {processes} processes ({', '.join(map(str, shares))}"
                f"; {len(sampled)} sampled) and {args.senders} senders to :{stack.ws_port}")

            deadline = start_at + n / args.ramp_rate + 60
            last_print = 0.0
            while True:
                time.sleep(1)
                states = self.ask(readers, "status")
                sending = self.ask([senders], "status")[0]
                opened = sum(s["open"] for s in states)
                failed = sum(s["failed"] + s["dropped"] for s in states)
                handshaking = sum(s["handshaking"] for s in states)
                if time.time() - last_print > 5:
                    log(f"  {time.time() - start_at:5.1f} s: readers open {opened}, handshaking "
                        f"{handshaking}, failed/dropped {failed}; senders open {sending['open']}"
                        f"/{args.senders}")
                    last_print = time.time()
                if stack.server.poll() is not None:
                    raise RuntimeError(f"the API node died: {stack.log_tail()}")
                settled = (time.time() > start_at + n / args.ramp_rate and opened + failed >= n
                           and handshaking == 0 and sending["connected"]
                           and sending["joined"] == sending["open"])
                if settled or time.time() > deadline:
                    if not settled:
                        log(f"  ramp did not settle: readers open {opened}, failed {failed}; "
                            f"senders {sending}")
                    break
            phases["ramp_end"] = time.time()
            ramp_status, sender_ramp = states, sending
            log(f"ramp done in {phases['ramp_end'] - start_at:.1f} s: readers open {opened}/{n}, "
                f"senders open {sending['open']}/{args.senders}")

            # Hold (connected, no chat: what the sockets cost alone), then chat; REST over both.
            phases["hold"] = time.time() + 0.5
            phases["chat"] = phases["hold"] + args.hold
            phases["chat_end"] = phases["chat"] + args.seconds
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report its baseline")
            rest_results = rest.recv()
            rest.send({"start_at": phases["hold"], "seconds": args.hold + args.seconds})
            self.ask([senders], "start", phases["chat"], args.seconds)
            log(f"holding {args.hold:.0f} s, then {args.senders} senders × {args.rate}/s "
                f"= {args.senders * args.rate:.0f} messages/s for {args.seconds:.0f} s, REST "
                f"{args.rest_rate:.0f}/s")
            while time.time() < phases["chat_end"]:
                time.sleep(min(5.0, max(0.0, phases["chat_end"] - time.time())))
                if stack.server.poll() is not None:
                    raise RuntimeError(f"the API node died: {stack.log_tail()}")
                if phases["chat"] < time.time() < phases["chat_end"] - 1:
                    sending = self.ask([senders], "status")[0]
                    log(f"  chat: sent {sending['sent']}, acked {sending['acked']}, notices "
                        f"{sending['notices'] or 0}")
            time.sleep(args.settle)  # the last messages reach every reader
            phases["settled"] = time.time()
            final_states = self.ask(readers, "status")
            if not rest.poll(30):
                raise RuntimeError("the REST load did not report")
            rest_results += rest.recv()
            rest.send(None)
            sender_result = self.ask([senders], "stop", timeout=60)[0]
            results = self.ask(readers, "stop", timeout=120)
            sampler.stopping.set()
            sampler.join(timeout=2)
            hwm = sampler.hwm()
            return self.analyse_chat(n, stack, phases, ramp_status, sender_ramp, final_states,
                                     sender_result, results, rest_results, sampler, hwm,
                                     processes, shares, len(sampled))
        finally:
            if sampler is not None:
                sampler.stopping.set()
            self.tear_down(stack)

    @staticmethod
    def open_chat(base: str, token: str) -> None:
        """The channel's chat as a new channel's owner would set it for the bench: no minimum
        account age (the senders' accounts are seconds old), no slow mode, no followers-only."""
        status, settings = call(base, "GET", "/api/channel/chat/settings", token=token)
        if status == 404:  # a build without the settings REST (moderation) yet: its defaults
            log("no /api/channel/chat/settings on this build: the chat defaults apply")
            return
        if status != 200:
            raise RuntimeError(f"GET /api/channel/chat/settings: {status} {settings}")
        wanted = {"enabled": True, "slow_mode_seconds": None, "followers_only_minutes": None,
                  "min_account_age_minutes": 0}  # a partial update: only these fields
        status, body = call(base, "PUT", "/api/channel/chat/settings", wanted, token=token)
        if status != 200:
            raise RuntimeError(f"PUT /api/channel/chat/settings: {status} {body}")

    # --- figures ----------------------------------------------------------------------------------

    def analyse_chat(self, n: int, stack: Stack, phases: dict[str, float],
                     ramp_status: list[Any], sender_ramp: dict[str, Any],
                     final_states: list[Any], sender_result: dict[str, Any],
                     results: list[dict[str, Any]],
                     rest_results: list[tuple[float, float, int, str]], sampler: Sampler,
                     hwm: int, processes: int, shares: list[int],
                     sampled: int) -> dict[str, Any]:
        args = self.args
        chat_start, chat_end = phases["chat"], phases["chat_end"]
        failed: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        for s in final_states:
            failed.update(s["failures"])
            drops.update(s["drops"])
        final_open = sum(s["open"] for s in final_states)
        frames = sum(s["frames"] for s in final_states)

        sent: dict[str, tuple[float, float]] = sender_result["sent"]
        acks: dict[str, tuple[int, float]] = sender_result["acks"]
        acked = {nonce: ack for nonce, ack in acks.items() if nonce in sent}
        expected = {ack[0] for ack in acked.values()}
        ack_delays = sorted(ack[1] - sent[nonce][0] for nonce, ack in acked.items())
        lateness = sorted(moment - due for moment, due in sent.values())
        notices = Counter(code for _, code in sender_result["notices"])

        readers = [r for result in results for r in result["readers"]]
        # Measured: sampled readers that had joined before the chat began and were still open
        # after it had settled (a reader the server closed did not keep up: counted as a drop).
        measured = [r for r in readers if r["first_arrival"] and r["first_arrival"] < chat_start
                    and not r["ended"]]
        delays: list[float] = []
        stamped: list[float] = []  # send → the server's sent_at (clock of the same machine)
        missing_total, readers_missing, duplicates, unknown = 0, 0, 0, 0
        reference: dict[int, int] | None = None
        out_of_order = 0
        kinds: Counter[str] = Counter()
        largest_lag = 0.0
        for r in measured:
            ids = array("q")
            ids.frombytes(r["ids"])
            history = array("q")
            history.frombytes(r["history"])
            got = set(ids) | set(history)
            missing = len(expected - got)
            missing_total += missing
            readers_missing += 1 if missing else 0
            duplicates += len(ids) - len(set(ids))
            unknown += len(set(ids) - expected)
            in_order = [i for i in ids if i in expected]
            if reference is None:
                reference = {message_id: index for index, message_id in enumerate(in_order)}
            else:
                positions = [reference[i] for i in in_order if i in reference]
                if any(b <= a for a, b in zip(positions, positions[1:], strict=False)):
                    out_of_order += 1
            samples = array("d")
            samples.frombytes(r["delays"])
            delays.extend(samples)
            samples = array("d")
            samples.frombytes(r["stamped"])
            stamped.extend(samples)
            kinds.update(r["kinds"])
            largest_lag = max(largest_lag, r["lag"])
        delays.sort()
        stamped.sort()
        dropped_sampled = Counter(r["reason"] for r in readers if r["ended"])

        windows = {name: sampler.window(start, end) for name, start, end in (
            ("baseline", phases["baseline"], phases["baseline_end"]),
            ("ramp", phases["ramp"], phases["ramp_end"]),
            ("hold", phases["hold"], chat_start), ("chat", chat_start, chat_end))}
        sent_in_window = sum(1 for moment, _ in sent.values() if chat_start <= moment < chat_end)
        rate = sent_in_window / args.seconds if args.seconds else math.nan
        per_message: dict[str, float] = {}
        hold, chat = windows["hold"], windows["chat"]
        if hold and chat and rate:
            per_message["api"] = (chat["cpu"] - hold["cpu"]) / rate
            per_message["api_gross"] = chat["cpu"] / rate
            for name in chat["proxies"]:
                per_message[name] = (chat["proxies"][name] - hold["proxies"][name]) / rate

        rest = {"baseline": rest_figures(rest_results, phases["baseline"], phases["baseline_end"]),
                "hold": rest_figures(rest_results, phases["hold"], chat_start),
                "chat": rest_figures(rest_results, chat_start, chat_end)}
        opened_at_ramp = sum(s["open"] for s in ramp_status)
        held = (opened_at_ramp == n and not failed and not drops and final_open == n
                and sender_result["status"]["open"] == args.senders)
        p99 = pct(delays, 99)
        verdicts = {
            "held": held,
            "delay": bool(delays) and p99 <= TARGET_DELAY_P99,
            "lost": bool(measured) and bool(expected) and missing_total == 0,
            "refused": not notices and len(acked) == len(sent) and len(sent) > 0,
            "rss": hwm <= TARGET_RSS,
            "rest": args.rest_rate == 0 or (rest["chat"]["count"] > 0 and not rest["chat"]["errors"]
                                            and rest["chat"]["p95"] <= TARGET_REST_P95),
        }
        figures = {
            "n": n, "processes": processes, "shares": shares, "sampled": sampled,
            "opened_at_ramp": opened_at_ramp, "ramp_seconds": phases["ramp_end"] - phases["ramp"],
            "failed": dict(failed), "drops": dict(drops), "final_open": final_open,
            "frames": frames, "sender_ramp": sender_ramp, "sender_status": sender_result["status"],
            "unsendable": sender_result["unsendable"],
            "sent": len(sent), "sent_in_window": sent_in_window, "rate": rate,
            "acked": len(acked), "notices": dict(notices), "ack_delays": ack_delays,
            "lateness": lateness, "measured": len(measured), "readers": len(readers),
            "dropped_sampled": dict(dropped_sampled), "delays": delays, "stamped": stamped,
            "expected": len(expected), "missing": missing_total,
            "readers_missing": readers_missing, "duplicates": duplicates, "unknown": unknown,
            "out_of_order": out_of_order, "kinds": dict(kinds), "largest_lag": largest_lag,
            "hwm": hwm, "windows": windows, "per_message": per_message, "rest": rest,
            "verdicts": verdicts, "ok": all(verdicts.values()),
        }
        report(figures, stack, args)
        return figures
