"""bench/notify.py's printed figures."""

from __future__ import annotations

import argparse
import math
from typing import Any

from bench.chat_report import spread
from bench.viewers_report import ms

TARGETS = "stored ≤ 10 s, pushed ≤ 10 s, nothing missing, REST p95 ≤ 50 ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(f: dict[str, Any], stack: Any, args: argparse.Namespace) -> None:
    n, v = f["n"], f["verdicts"]
    print(f"== go-live of a channel with {args.followers:,} followers, {n:,} of them connected to "
          f"/ws/notifications; {args.api_processes} API processes; {f['processes']} follower "
          f"processes ({'/'.join(map(str, f['shares']))}) + REST on the client core")
    print(f"   path: the public port :{stack.http_port} (edge nginx) → API :{stack.api_port}; "
          f"go-live: {args.go_live}; SF_NOTIFY_FANOUT_BATCH "
          f"{stack.config.notify_fanout_batch}")
    print(f"   connected {f['opened_at_ramp']:,}/{n:,} in {f['ramp_seconds']:.1f} s (ramp "
          f"{args.ramp_rate:.0f}/s); failed {sum(f['failures'].values())} {f['failures'] or ''};"
          f" ticket failures {sum(f['ticket_failures'].values())} {f['ticket_failures'] or ''};"
          f" open at the end {f['open_at_end']:,}")
    print(f"   fan-out planned (its row's created_at) at t0 + {ms(f['planned'])}; status "
          f"{f['status']}, notified {f['notified']}, notifications stored {f['rows']:,}")
    progress = f["progress"]
    marks = []
    for share in (0.25, 0.5, 0.75):
        for moment, notified in progress:
            if notified >= share * args.followers:
                marks.append(f"{share:.0%} at {moment:.2f} s")
                break
    print(f"   stored: {' · '.join(marks) or 'n/a'}")
    print(f"   every notification stored (polled, 100 ms): t0 + {ms(f['stored'])}  (the row's "
          f"done_at: t0 + {ms(f['stored_server'])})  {verdict(v['stored'])} (≤ 10 s)")
    print(f"   every connected follower pushed (kernel arrival of its notification − t0): "
          f"{spread(f['pushed'])}  {verdict(v['pushed'])} (all ≤ 10 s)")
    print(f"   missing: {f['missing']} of {f['opened_at_ramp']:,} connected never got one "
          f"({f['dropped_missing']} of them closed by the server); duplicates "
          f"{f['duplicates']}; naming another stream {f['wrong_stream']}  "
          f"{verdict(v['missing'])}")
    seconds = f["fanout_seconds"]
    print(f"   API processes: {f['cpu_seconds']:.2f} CPU-s from t0 to the end of the fan-out "
          f"({seconds:.2f} s: {f['cpu_seconds'] / seconds if seconds else math.nan:.2f} cores); "
          f"peak RSS (VmHWM, summed) {f['hwm'] / 2**20:.0f} MiB")
    for name in ("baseline", "connected", "fanout"):
        w = f["windows"].get(name)
        if w:
            proxies = ", ".join(f"{k} {val:.2f}" for k, val in w["proxies"].items())
            cores = ", ".join(f"{k} {val:.0%}" for k, val in w["cores"].items())
            print(f"   {name:>9}: API CPU {w['cpu']:.2f} cores, RSS {w['rss_max'] / 2**20:.0f} "
                  f"MiB; {proxies}; cores busy {cores}")
    for name, label in (("baseline", "REST alone"), ("connected", "sockets open, before"),
                        ("fanout", "during the fan-out"), ("after", "after it")):
        r = f["rest"][name]
        print(f"   REST {label:>22}: {r['count']:>5} requests  p50 {ms(r['p50'])}  p95 "
              f"{ms(r['p95'])}  p99 {ms(r['p99'])}  max {ms(r['max'])}  errors {r['errors'] or 0}")
    print(f"   REST p95 during the fan-out {verdict(v['rest'])} (≤ 50 ms)")
    print(f"== {'PASS' if f['ok'] else 'FAIL'} ({TARGETS}; connected "
          f"{verdict(v['connected'])})")
