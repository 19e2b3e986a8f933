"""Run slots: several suites side by side on one machine, each with Redis databases of its own.

SFTEST_SLOT (0-4) selects the Redis databases of a run (PostgreSQL databases are per session
anyway, and ports are reserved by `harness.ports`). Redis has databases 0-15; 8 is the
benchmarks'.
"""

from __future__ import annotations

import os

SLOT = int(os.environ.get("SFTEST_SLOT", "0"))
TEST_REDIS_DB = (9, 11, 13, 5, 2)[SLOT]   # the in-process app's tests (flushed per test)
MEDIA_REDIS_DB = TEST_REDIS_DB + 1         # platforms started by tests (nginx + `sf serve`)
BENCH_REDIS_DB = 8
