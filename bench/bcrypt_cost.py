"""What one password check costs at each bcrypt work factor on this machine: CPU time of
`PasswordHasher.verify` (SHA-256 pre-hash + bcrypt), the median of several, one thread.

    .venv/bin/python bench/bcrypt_cost.py [--rounds 10 11 12] [--checks 7]

Prints per factor the CPU milliseconds per check and the checks a second one core can do;
SF_BCRYPT_ROUNDS is chosen from these (docs/benchmarks.md): a login costs about one check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sf.security import PasswordHasher  # noqa: E402

PASSWORD = "correct horse battery staple"


def cost_of_check(rounds: int, checks: int) -> float:
    """The median CPU seconds of one `verify` at `rounds`."""
    hasher = PasswordHasher(rounds, workers=1)
    stored = hasher.hash(PASSWORD)
    times = []
    for _ in range(checks):
        started = time.process_time()
        assert hasher.verify(PASSWORD, stored)
        times.append(time.process_time() - started)
    hasher.executor.shutdown()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, nargs="*", default=[10, 11, 12])
    parser.add_argument("--checks", type=int, default=7)
    args = parser.parse_args()
    for rounds in args.rounds:
        seconds = cost_of_check(rounds, args.checks)
        print(f"bcrypt {rounds:>2} rounds: {seconds * 1000:6.1f} ms CPU per check, "
              f"{1 / seconds:5.1f} checks/s per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
