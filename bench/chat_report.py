"""bench/chat.py's printed figures."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from bench.viewers_report import ms
from harness.measure import percentile_sorted as pct


def spread(values: list[float]) -> str:
    """p50 / p95 / p99 / max of sorted samples."""
    return (f"p50 {ms(pct(values, 50))}  p95 {ms(pct(values, 95))}  p99 {ms(pct(values, 99))}"
            f"  max {ms(values[-1] if values else math.nan)}")


def report(f: dict[str, Any], stack: Any, args: argparse.Namespace) -> None:
    n, v = f["n"], f["verdicts"]
    path = (f"public port :{stack.http_port} (edge nginx) → API :{stack.api_port}"
            if args.via == "edge" else f"API :{stack.api_port} directly (REST through the edge)")
    print(f"== {n} readers + {args.senders} senders on /ws/streams/{{id}}/live, {args.api_processes}"
          f" API processes; {f['processes']} reader processes "
          f"({'/'.join(map(str, f['shares']))}) + senders + REST on the client core")
    print(f"   path: {path}")
    print(f"   readers connected {f['opened_at_ramp']}/{n} in {f['ramp_seconds']:.1f} s; failed "
          f"to connect {sum(f['failed'].values())} {f['failed'] or ''}; closed by the server "
          f"{sum(f['drops'].values())} {f['drops'] or ''}; open at the end {f['final_open']}/{n};"
          f" {f['frames']:,} text frames read in all")
    status = f["sender_status"]
    print(f"   senders open {status['open']}/{args.senders} (ticket failures "
          f"{status['ticket_failures'] or 0}, connect failures {status['failures'] or 0}, closed "
          f"by the server {status['drops'] or 0})")
    print(f"   sent {f['sent']:,} messages ({f['rate']:.1f}/s in the {args.seconds:.0f} s window; "
          f"asked {args.senders * args.rate:.1f}/s); acked {f['acked']:,}; refused with a notice "
          f"{sum(f['notices'].values())} {f['notices'] or ''}; not sent (socket gone) "
          f"{sum(f['unsendable'].values())}")
    print(f"   send → chat.ack at the sender: {spread(f['ack_delays'])}")
    late = f["lateness"]
    print(f"     (not counted) the senders' own lateness, due → sent: p99 {ms(pct(late, 99))}, "
          f"max {ms(late[-1] if late else math.nan)}")
    d = f["delays"]
    print(f"   send → receive, sender's time.time() → kernel arrival at the reader ({len(d):,} "
          f"samples over {f['measured']} sampled readers that kept up, of {f['readers']} "
          f"sampled): {spread(d)}")
    print(f"     of which send → the message's sent_at (socket, checks, insert): "
          f"{spread(f['stamped'])}")
    print(f"     (not counted) the readers' largest arrival → read lag on the client core: "
          f"{ms(f['largest_lag'])}")
    print(f"   lost: {f['missing']:,} of {f['expected']:,} acked messages × {f['measured']} readers"
          f" missing ({f['readers_missing']} readers missed any); duplicates {f['duplicates']}; "
          f"ids never acked {f['unknown']}; readers whose order differs from the first one's "
          f"{f['out_of_order']}; sampled readers closed by the server "
          f"{sum(f['dropped_sampled'].values())} {f['dropped_sampled'] or ''}")
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(f["kinds"].items()))
    print(f"   what sampled readers got (batches unpacked): {kinds or 'nothing'}")
    windows = f["windows"]
    parts = [f"{name} {w['cpu'] * 100:.0f}% CPU, RSS ≤{w['rss_max'] / 2**20:.0f} MiB"
             for name, w in windows.items() if w]
    print(f"   API processes together: RSS peak (VmHWM, summed) {f['hwm'] / 2**20:.0f} MiB; "
          + "; ".join(parts))
    for name in ("hold", "chat"):
        w = windows[name]
        if w:
            proxies = ", ".join(f"{k} {val * 100:.0f}%" for k, val in w["proxies"].items())
            cores = ", ".join(f"{k} {val * 100:.0f}%" for k, val in sorted(w["cores"].items()))
            print(f"     {name}: cores busy {cores}; nginx/edge/redis {proxies}")
    per = f["per_message"]
    if per:
        others = ", ".join(f"{k} {val * 1000:.2f} ms" for k, val in per.items()
                           if k not in ("api", "api_gross"))
        deliveries = n + args.senders
        print(f"   CPU per message (chat minus hold, over {f['rate']:.1f} messages/s): API "
              f"{per['api'] * 1000:.2f} ms ({per['api'] / deliveries * 1e6:.1f} µs per socket "
              f"delivered to; {per['api_gross'] * 1000:.2f} ms with the sockets' idle cost); "
              f"{others}")
    for name, label in (("baseline", "before any reader (baseline)"), ("hold", "during the hold"),
                        ("chat", "during chat")):
        r = f["rest"][name]
        print(f"   REST {args.rest_rate:.0f}/s {label}: {r['count']} requests, {spread_rest(r)}  "
              f"errors {r['errors'] or 0}")
    r = f["rest"]["chat"]
    print(f"   targets: {n} readers held {'yes' if v['held'] else 'NO'}; p99 send → receive "
          f"{ms(pct(d, 99))} ≤ 1 s {'yes' if v['delay'] else 'NO'}; lost {f['missing']} = 0 "
          f"{'yes' if v['lost'] else 'NO'}; every message accepted "
          f"{'yes' if v['refused'] else 'NO'}; RSS {f['hwm'] / 2**20:.0f} MiB ≤ 1.5 GiB "
          f"{'yes' if v['rss'] else 'NO'}; "
          + (f"REST p95 {ms(r['p95'])} ≤ 50 ms {'yes' if v['rest'] else 'NO'}"
             if args.rest_rate else "no REST load") + f" → {'MET' if f['ok'] else 'NOT MET'}")
    sys.stdout.flush()


def spread_rest(r: dict[str, Any]) -> str:
    return f"p50 {ms(r['p50'])}  p95 {ms(r['p95'])}  p99 {ms(r['p99'])}  max {ms(r['max'])}"
