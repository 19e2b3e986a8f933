"""Live-viewers WebSocket benchmark: N concurrent viewers of one stream on one API node, with churn.

Starts an isolated stack (bench/viewers_stack.py: database `sf_bench_viewers`, a Redis server of
its own, an API node pinned to CPU 0 with nginx in front, on ports reserved by harness.ports,
all state in a temporary var dir), creates a user and a prepared stream over REST, then from
processes pinned to CPU 1 (bench/viewers_clients.py; the run: bench/viewers_run.py):

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
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.viewers_clients import MAX_PER_PROCESS  # noqa: E402
from bench.viewers_report import ms  # noqa: E402
from bench.viewers_run import Run  # noqa: E402
from bench.viewers_stack import CLIENT_CPU, bench_entry, raise_nofile  # noqa: E402
from harness.measure import percentile_sorted as pct  # noqa: E402

LADDER = (1000, 2500, 5000, 10000)


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
    bench_entry(main)

