"""bench/viewers.py's printed figures."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from harness.measure import percentile_sorted as pct

SERVER_CPU, CLIENT_CPU = 0, 1  # as bench/viewers_stack.py pins them


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value * 1000:.0f} ms"


def report(f: dict[str, Any], stack: Any, args: argparse.Namespace) -> None:
    n = f["n"]
    path = (f"clients and REST → the public port :{stack.http_port} (edge nginx, one worker per "
            f"core, reuseport) → API node :{stack.api_port}"
            if f["via"] == "edge" else
            f"clients → API node :{stack.api_port} directly; REST through the edge "
            f":{stack.http_port}")
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
