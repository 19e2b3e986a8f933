"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import os

# SFTEST_SLOT (0-2) lets several suites run side by side on one machine: each slot has its
# own Redis databases and port range (PostgreSQL databases are per session anyway).
TEST_SLOT = int(os.environ.get("SFTEST_SLOT", "0"))
TEST_REDIS_DB = 9 + 2 * TEST_SLOT
MEDIA_REDIS_DB = TEST_REDIS_DB + 1
TEST_PORT_OFFSET = 1000 * TEST_SLOT
