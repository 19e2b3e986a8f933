"""Measuring helpers for benchmarks: one percentile definition, one /proc CPU reader.

Percentile (every benchmark uses this one): the sample at 0-based position floor(p/100 · n) of
the n sorted samples, capped at the last one; NaN when there are none. So at least p % of the
samples come before it: p50 of [1, 2] is 2, p99 of 1,000 samples is the 991st smallest (of 100,
the largest). No interpolation: every figure printed is a value some sample really had.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile_sorted(ordered: list[float], p: float) -> float:
    """The p-th percentile (0-100) of samples already in ascending order."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0-100) of samples in any order (see the module docstring)."""
    return percentile_sorted(sorted(values), p)


# --- CPU and memory from /proc ------------------------------------------------------------------

def process_stat(pid: int) -> tuple[int, int]:
    """(parent pid, CPU ticks: utime + stime of all its threads) of a process; OSError if gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, all threads) a process has used."""
    return process_stat(pid)[1] / CLOCK_TICKS


def process_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                values[name] = int(value.split()[0])
    return values


def children_of(pid: int) -> list[int]:
    """The direct children of a process (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def cpu_times() -> dict[str, tuple[int, int]]:
    """(busy, total) ticks of the machine ("cpu") and of each core ("cpu0", ...)."""
    result = {}
    with open("/proc/stat") as handle:
        for line in handle:
            if not line.startswith("cpu"):
                break
            name, *numbers = line.split()
            values = [int(n) for n in numbers[:8]]  # guest time is counted in user already
            idle = values[3] + values[4]
            result[name] = (sum(values) - idle, sum(values))
    return result


def machine_busy() -> tuple[int, int]:
    """(busy ticks, all ticks) of the whole machine."""
    return cpu_times()["cpu"]


def core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) ticks of each core."""
    return {name: times for name, times in cpu_times().items() if name != "cpu"}


# --- progress -------------------------------------------------------------------------------------

def log(message: str) -> None:
    """A benchmark's progress line on stderr (the figures go to stdout)."""
    print(f"# {message}", file=sys.stderr, flush=True)
