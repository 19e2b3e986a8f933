"""What `/metrics` reads at scrape time: whether PostgreSQL and Redis answer, the pool's use,
the media disk, this process's viewers and, on a media node's ingest process, nginx-rtmp's
statistics. Everything here awaits (or runs in an executor): a scrape never blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from sf.db.backups import backup_time, file_sha256, recorded_sha256
from sf.media.rtmp_stat import RTMP_STAT, fetch_stat
from sf.observability import (
    BACKUP_LAST_SUCCESS,
    DB_POOL_CONNECTIONS,
    DB_POOL_MAX,
    DEPENDENCY_LATENCY,
    DEPENDENCY_UP,
    MEDIA_DISK_FREE,
    MEDIA_DISK_SIZE,
    VIEWERS,
)
from sf.services.container import Services

log = logging.getLogger("sf.monitoring")

PROBE_TIMEOUT = 1.5  # seconds; well inside Prometheus' scrape timeout


async def refresh_node_metrics(services: Services) -> None:
    """Bring the scrape-time gauges up to date (each part bounded by PROBE_TIMEOUT)."""
    await asyncio.gather(
        _probe("postgres", services.db.fetchval("SELECT 1")),
        _probe("redis", services.redis.ping()),
        _media_disk(services.config.media_dir),
        BACKUP_FRESHNESS.refresh(services.config.backup_dir),
        _rtmp_stat(services),
    )
    pool = services.db
    size, idle = pool.get_size(), pool.get_idle_size()
    DB_POOL_CONNECTIONS.labels("idle").set(idle)
    DB_POOL_CONNECTIONS.labels("busy").set(size - idle)
    DB_POOL_MAX.set(pool.get_max_size())
    VIEWERS.set(services.viewers.local_viewers())


async def _probe(dependency: str, probe: Awaitable[Any]) -> None:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, PROBE_TIMEOUT)
        up = 1
    except Exception:  # any failure (refused, timed out, auth) is "unreachable"
        up = 0
    DEPENDENCY_UP.labels(dependency).set(up)
    DEPENDENCY_LATENCY.labels(dependency).set(time.perf_counter() - started)


async def _media_disk(media_dir: Path) -> None:
    try:
        stats = await asyncio.get_running_loop().run_in_executor(None, os.statvfs, media_dir)
    except OSError:
        return
    MEDIA_DISK_FREE.set(stats.f_bavail * stats.f_frsize)
    MEDIA_DISK_SIZE.set(stats.f_blocks * stats.f_frsize)


async def _rtmp_stat(services: Services) -> None:
    """nginx-rtmp's numbers, from the node's ingest process only (the node has one nginx)."""
    ingest = services.ingest
    if ingest is None or not ingest.owner:
        return
    config = services.config
    try:
        stat = await fetch_stat(f"{config.media_node_url}/stat", config.internal_secret,
                                timeout=PROBE_TIMEOUT)
    except Exception as exc:  # unreachable, refused, timed out, not XML: sf_rtmp_up 0
        log.debug("nginx-rtmp stat unavailable: %s", type(exc).__name__)
        RTMP_STAT.update(None)
        return
    RTMP_STAT.update(stat)


# --- backups: the files `sf backup` (sf/ops/backup.py) writes, read here for their freshness ---


class BackupFreshness:
    """sf_backup_last_success_timestamp_seconds: the newest backup whose dump still matches its
    checksum (0 when there is none).

    Each dump is hashed once per process (remembered by size and mtime), on an executor thread;
    a scrape waits for that at most PROBE_TIMEOUT and keeps the previous value meanwhile, so a
    large new dump shows from a later scrape on.
    """

    def __init__(self) -> None:
        self._matches: dict[tuple[str, int, int, str], bool] = {}
        self._scan: asyncio.Future[float] | None = None
        self._scan_loop: asyncio.AbstractEventLoop | None = None

    def newest_verified(self, directory: Path) -> float:
        """The time of the newest backup in `directory` whose checksum matches, else 0."""
        candidates = sorted(((taken, path) for path in directory.glob("sf-*.dump")
                             if (taken := backup_time(path.name)) is not None), reverse=True)
        seen: dict[tuple[str, int, int, str], bool] = {}
        newest = 0.0
        for taken, dump in candidates:
            expected = recorded_sha256(dump)
            try:
                stat = dump.stat()
            except OSError:
                continue  # removed by retention meanwhile
            if expected is None:
                continue
            key = (str(dump), stat.st_size, stat.st_mtime_ns, expected)
            if key not in self._matches:
                try:
                    self._matches[key] = file_sha256(dump) == expected
                except OSError:
                    continue
            seen[key] = self._matches[key]
            if seen[key]:
                newest = taken
                break
        self._matches = seen
        return newest

    async def refresh(self, directory: Path) -> None:
        loop = asyncio.get_running_loop()
        if self._scan is None or self._scan.done() or self._scan_loop is not loop:
            self._scan = loop.run_in_executor(None, self.newest_verified, directory)
            self._scan_loop = loop
        try:
            newest = await asyncio.wait_for(asyncio.shield(self._scan), PROBE_TIMEOUT)
        except TimeoutError:
            return  # still hashing a large dump: the next scrape reports it
        except OSError as exc:  # the directory is unreadable: say so, keep the last value
            log.warning("cannot read the backup directory %s: %s", directory, exc)
            return
        BACKUP_LAST_SUCCESS.set(newest)


BACKUP_FRESHNESS = BackupFreshness()
