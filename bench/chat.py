"""Live chat benchmark: N readers and S senders of one stream's `/ws/streams/{id}/live` socket.

Starts an isolated stack (bench/viewers_stack.py's: database `sf_bench_chat`, a Redis server of
its own, nginx and the edge, one API node of --api-processes processes, on ports reserved by
harness.ports, all state in a temporary var dir), creates a streamer, a stream and S sender
accounts over REST (and opens the channel's chat to brand-new accounts), then from processes
pinned to the client core (bench/chat_clients.py; the run: bench/chat_run.py):

- REST alone first (200/s of the reads bench/viewers.py makes: this machine's own noise);
- ramps up N anonymous readers of `/live` over several processes (at most 5,000 sockets each:
  the open-file limit), each from an address of its own, four per /24, and the S senders
  (signed-in: a ticket each from `POST /api/ws/ticket`), also from addresses of their own;
- holds, connected and silent (what the sockets cost alone), then chats: the senders send
  `chat.send` at --rate messages/s each on an open-loop schedule spread evenly over them, each
  text stamped with the sender's time.time() just before the write; REST goes on throughout.

Printed: send → receive (the stamp → the kernel's arrival time at a sampled reader: the same
CLOCK_REALTIME on one machine), the messages each sampled reader that kept up (joined before the
chat, still open after it) did not get of every message acked, duplicates and order, send →
ack, refusals by notice code, readers closed by the server, the API processes' RSS and CPU per
phase and per message (chat minus hold), the edge's and Redis's, and REST latency before and
during. Targets (issue 22 at 10,000 readers, 200 senders × 0.25/s): p99 send → receive ≤ 1 s,
nothing lost, RSS ≤ 1.5 GiB, REST p95 ≤ 50 ms.

    .venv/bin/python bench/chat.py [--viewers 10000] [--senders 200] [--rate 0.25]
        [--seconds 60] [--hold 10] [--sample 500] [--api-processes 2] [--via edge|api]
        [--set SF_NAME=value ...] [--keep]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_run import ChatRun  # noqa: E402
from bench.viewers_clients import MAX_PER_PROCESS  # noqa: E402
from bench.viewers_stack import bench_entry, run_one_bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=10000, help="anonymous readers")
    parser.add_argument("--senders", type=int, default=200, help="signed-in senders")
    parser.add_argument("--rate", type=float, default=0.25, help="messages/s per sender")
    parser.add_argument("--seconds", type=float, default=60, help="chat phase")
    parser.add_argument("--hold", type=float, default=10,
                        help="connected and silent before the chat (the sockets' own cost)")
    parser.add_argument("--baseline", type=float, default=10,
                        help="REST alone before the ramp (the machine's own noise)")
    parser.add_argument("--settle", type=float, default=3,
                        help="after the last send, before the readers are checked")
    parser.add_argument("--sample", type=int, default=500,
                        help="readers that decode and record every message (the others only read)")
    parser.add_argument("--processes", type=int, default=4,
                        help=f"reader processes (more if one would hold > {MAX_PER_PROCESS})")
    parser.add_argument("--api-processes", type=int, default=2,
                        help="SF_API_PROCESSES of the node (1: one process pinned to CPU 0)")
    parser.add_argument("--via", choices=("edge", "api"), default="edge")
    parser.add_argument("--ramp-rate", type=float, default=500, help="connections/s")
    parser.add_argument("--rest-rate", type=float, default=200, help="REST requests/s")
    parser.add_argument("--set", action="append", default=[], metavar="SF_NAME=VALUE",
                        help="a platform setting for the run (e.g. a chat rate limit)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    return run_one_bench(f"SF live chat benchmark (via {args.via})", args.timeout,
                         lambda: ChatRun(args, args.viewers).execute())


if __name__ == "__main__":
    bench_entry(main)
