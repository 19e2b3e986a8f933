"""TCP ports for the platforms tests and benchmarks start: reserved, never picked by hand.

A port is free when it binds, and ours while this process holds an exclusive lock on
`<lock dir>/<port>.lock` (flock: the kernel drops it when the process ends, however it ends),
so parallel suites, run slots and benchmarks never take the same one. Ports come from below the
kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where no client socket or `bind(0)`
can take one between the reservation and the server binding it.

SF_PORT_RANGE=LOW-HIGH narrows the range; SF_PORT_LOCK_DIR moves the locks (default
/tmp/sf-ports, shared by every checkout on the machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
from pathlib import Path
from typing import IO

LOCK_DIR = Path(os.environ.get("SF_PORT_LOCK_DIR", "/tmp/sf-ports"))
_held: dict[int, IO[str]] = {}


def port_range() -> tuple[int, int]:
    """(lowest, highest) port to hand out."""
    if "SF_PORT_RANGE" in os.environ:
        low, _, high = os.environ["SF_PORT_RANGE"].partition("-")
        return int(low), int(high)
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    # Above the hand-picked ports of older checkouts (17000-25500), below the ephemeral ones.
    return 26000, min(ephemeral - 1, 32767)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lock(port: int) -> bool:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(LOCK_DIR, 0o1777)  # several users' suites share the directory
    handle = open(LOCK_DIR / f"{port}.lock", "a")  # noqa: SIM115 (held until released)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    if not _bindable(port):
        handle.close()
        return False
    _held[port] = handle
    return True


def reserve_ports(count: int = 1) -> list[int]:
    """`count` consecutive ports, free and locked for this process until `release_ports`."""
    low, high = port_range()
    for _ in range(1000):
        base = random.randint(low, high - count + 1)
        taken: list[int] = []
        for port in range(base, base + count):
            if port in _held or not _lock(port):
                break
            taken.append(port)
        if len(taken) == count:
            return taken
        release_ports(taken)
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high}")


def reserve_port() -> int:
    """One free port, locked for this process."""
    return reserve_ports(1)[0]


def release_ports(ports: list[int]) -> None:
    """Give ports back (their servers have stopped)."""
    for port in ports:
        handle = _held.pop(port, None)
        if handle is not None:
            handle.close()
