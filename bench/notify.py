"""Go-live notifications benchmark: a channel with F followers goes live; N of them are connected.

Issue 23's goal: every notification stored and every connected follower's push sent within
10 s, REST p95 ≤ 50 ms meanwhile. Starts an isolated stack (bench/viewers_stack.py's: database
`sf_bench_notify`, a Redis server of its own, the node's nginx with RTMP and the edge, one API
node of --api-processes processes, on ports reserved by harness.ports), then:

Setup (not measured, and a shortcut): the streamer signs up over REST; the F followers and
their follows are inserted with bulk SQL (generate_series; no addresses), `followers_count`
set by an UPDATE; the N connected followers (every F/N-th id, so they spread over the whole
fan-out) get sessions and access tokens minted by the platform's own SessionStore in the
stack's Redis (what a login ends with, without N bcrypt checks). Each then takes its one-time
ticket over REST through the public port (`POST /api/ws/ticket`) and opens
`/ws/notifications?ticket=…` through the edge from an address of its own (127.x.y.z, four per
/24: the per-address socket and handshake limits keep their defaults), from processes pinned to
the client core (bench/notify_clients.py; at most 5,000 sockets each: the open-file limit).

Measured (bench/notify_run.py, printed by bench/notify_report.py): REST alone; REST with the
sockets open; then t0 = the moment before the streamer goes live — by default through the real
path, ffmpeg publishing lavfi testsrc2 (320x180) over RTMP to the stack's nginx-rtmp, whose
on_publish callback makes the stream live (the account is new, so it is served source-only: no
ladder on the server's cores); `--go-live hook` posts that callback itself, as nginx-rtmp would.
Printed: t0 → every notification stored (the fan-out row polled every 100 ms; also its
done_at), t0 → the kernel arrival of each connected follower's notification frame
(p50/p95/p99/max; how many never got one, duplicates), the API processes' CPU and RSS, and
REST p50/p95/p99 (bench/chat.py's read mix and rate, open loop) before and during the fan-out.

    .venv/bin/python bench/notify.py [--followers 100000] [--connected 10000]
        [--api-processes 2] [--go-live rtmp|hook] [--set SF_NAME=value ...] [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.notify_run import NotifyRun  # noqa: E402
from bench.viewers_clients import MAX_PER_PROCESS  # noqa: E402
from bench.viewers_stack import bench_entry, run_one_bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--followers", type=int, default=100000, help="the channel's followers")
    parser.add_argument("--connected", type=int, default=10000,
                        help="followers with /ws/notifications open")
    parser.add_argument("--quick", action="store_true",
                        help="a development run: 5,000 followers, 500 connected, short phases")
    parser.add_argument("--api-processes", type=int, default=2,
                        help="SF_API_PROCESSES of the node (1: one process pinned to CPU 0)")
    parser.add_argument("--go-live", choices=("rtmp", "hook"), default="rtmp",
                        help="rtmp: ffmpeg publishes to nginx-rtmp; hook: post its on_publish")
    parser.add_argument("--processes", type=int, default=2,
                        help=f"follower processes (more if one would hold > {MAX_PER_PROCESS})")
    parser.add_argument("--baseline", type=float, default=10, help="REST alone, seconds")
    parser.add_argument("--hold", type=float, default=5,
                        help="sockets open, before the go-live, seconds")
    parser.add_argument("--window", type=float, default=30,
                        help="after t0: how long to wait for the fan-out (and REST goes on)")
    parser.add_argument("--ramp-rate", type=float, default=500, help="connections/s")
    parser.add_argument("--rest-rate", type=float, default=200, help="REST requests/s")
    parser.add_argument("--set", action="append", default=[], metavar="SF_NAME=VALUE",
                        help="a platform setting for the run (e.g. SF_NOTIFY_FANOUT_BATCH=2000)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.followers, args.connected = min(args.followers, 5000), min(args.connected, 500)
        args.baseline, args.hold, args.window = 3, 2, 15
    return run_one_bench("SF go-live notifications benchmark", args.timeout,
                         lambda: NotifyRun(args, args.connected).execute())


if __name__ == "__main__":
    bench_entry(main)
