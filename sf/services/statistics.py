"""Live viewer totals into PostgreSQL, and stream statistics.

Every process's WebSocket hub writes its viewers to Redis (`ViewerCounts`). One process at a
time — the holder of a Redis leader lock — reads the totals back: every
`SF_VIEWERS_SYNC_SECONDS` it copies them onto `streams.viewers_count` (so sorting by viewers
and the category totals follow the audience within a couple of seconds), and every
`SF_STATS_SAMPLE_SECONDS` it writes one viewer sample per live stream and that stream's
aggregates: the peak is the highest total ever computed while the stream was live (Redis keeps
it, so a crowd between two samples counts too), watch time grows by the viewers connected for
at least SF_VIEWER_MIN_DWELL_SECONDS, and unique viewers count only those as well. While Redis
is unreachable nothing is written: the streams keep their last known counts and the statistics
their last samples.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.cache import Cache
from sf.config import Config
from sf.db import statistics as statistics_db
from sf.db import users as users_db
from sf.db.statistics import ViewerSample
from sf.services.streams import StreamService
from sf.services.viewer_counts import ViewerCounts

log = logging.getLogger("sf.statistics")

LEADER_KEY = "sf:leader:statistics"
# Take the lock if it is free, or extend it if this holder has it. 1: held, 0: someone else.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# The sync gives way to user requests: a stream row it needs that an ending stream holds (or
# a category its trigger needs) makes it wait at most this long, then it tries again next tick,
# long before PostgreSQL's deadlock check (1 s) could pick the user's transaction as victim.
SYNC_LOCK_TIMEOUT = "200ms"


class LeaderLock:
    """A Redis lock held by one instance at a time (SET NX PX), renewed by its holder.

    The token is unique per instance, not per node id: the processes of one `sf serve`
    share their node id. A holder that stops renewing loses the lock after `ttl` seconds and
    another instance takes it over.
    """

    def __init__(self, redis: Redis, key: str, ttl: float, owner: str) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = f"{owner}:{os.getpid()}:{uuid.uuid4().hex}"
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take or renew the lock; True while this instance holds it."""
        return bool(await self._hold(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        """Give the lock up (if still held) so another instance need not wait for the TTL."""
        await self._release(keys=[self.key], args=[self.token])


class Outage:
    """Logs the start and the end of an outage of a dependency, once each (not every tick)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, doing: str, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("%s unreachable while %s (%s); keeping the last values until it is back",
                        self.what, doing, exc)

    def recovered(self) -> None:
        if self.down:
            self.down = False
            log.info("%s reachable again", self.what)


@dataclass(frozen=True)
class StreamStatistics:
    """What `GET /api/streams/{id}/statistics` answers."""

    stream_id: int
    peak_viewers: int
    average_viewers: float
    unique_viewers: int
    watch_time_seconds: int
    duration_seconds: int
    followers_gained: int
    timeline: list[ViewerSample]


@dataclass(frozen=True)
class UserStatistics:
    """What `GET /api/users/{username}/statistics` answers."""

    username: str
    followers_count: int
    total_streams: int
    total_stream_seconds: int
    total_watch_time_seconds: int
    peak_viewers: int
    average_viewers: float
    last_stream_at: datetime | None


def _average(total: int, count: int) -> float:
    return round(total / count, 2) if count else 0.0


class StatisticsService:
    """Copies live viewer totals onto streams, samples them into statistics, answers reads."""

    def __init__(self, config: Config, db: asyncpg.Pool, redis: Redis, counts: ViewerCounts,
                 cache: Cache, streams: StreamService) -> None:
        self.config = config
        self.db = db
        self.counts = counts
        self.cache = cache
        self.streams = streams
        self.sync_seconds = config.viewers_sync_seconds
        self.sample_seconds = config.stats_sample_seconds
        # A pause in sampling (no leader, Redis down) adds at most two intervals of watch time.
        self.max_step = 2 * self.sample_seconds
        self.leader = LeaderLock(redis, LEADER_KEY, ttl=max(10.0, 5 * self.sync_seconds),
                                 owner=config.node_id)
        self.redis_outage = Outage("Redis")
        self.database_outage = Outage("PostgreSQL")
        self._task: asyncio.Task[None] | None = None

    # --- periodic work (on the leader) ---------------------------------------------------------

    async def sync_viewers(self) -> list[int]:
        """Copy the live totals onto the live streams whose count changed (one statement); the
        ids that changed. Cached public lists are dropped when something changed."""
        live = await statistics_db.live_stream_ids(self.db)
        try:
            totals = await self.counts.totals(live)
        except RedisError as exc:
            self.redis_outage.failed("reading viewer totals", exc)
            return []
        self.redis_outage.recovered()
        viewers = {sid: total.viewers for sid, total in totals.items()}
        try:
            async with self.db.acquire() as connection, connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{SYNC_LOCK_TIMEOUT}'")
                changed = await statistics_db.set_viewer_counts(connection, viewers)
        except asyncpg.LockNotAvailableError:
            log.debug("viewer sync gave way to a concurrent stream change")
            return []
        if changed:
            try:
                await self.cache.forget_public_views()
            except RedisError as exc:  # the cache TTL bounds the staleness instead
                self.redis_outage.failed("invalidating cached lists", exc)
        return changed

    async def sample(self, now: float | None = None) -> int:
        """One viewer sample per live stream, with its aggregates; how many were sampled.

        `now` (epoch seconds) is when the sample is taken, the database's clock by default
        (the clock of `started_at` and `ended_at`). Also closes the statistics of streams that
        ended since: the last interval, the final unique count and peak.
        """
        live = await statistics_db.live_stream_ids(self.db)
        try:
            totals = await self.counts.totals(live)  # first: it brings unique counts up to date
            unique = await self.counts.unique(live)
            ended = await statistics_db.ended_unclosed_streams(self.db)
            final_unique = await self.counts.unique(ended)
            final_peaks = await self.counts.peaks(ended)
        except RedisError as exc:
            self.redis_outage.failed("reading viewer totals for statistics", exc)
            return 0
        self.redis_outage.recovered()
        ts = None if now is None else datetime.fromtimestamp(now, UTC)
        sampled = await statistics_db.record_samples(
            self.db, ts, [statistics_db.LiveCount(sid, total.viewers, total.dwelled, total.peak,
                                                  unique.get(sid, 0))
                          for sid, total in totals.items()],
            max_step=self.max_step, min_gap=self.sample_seconds / 2)
        await statistics_db.close_streams(self.db, final_unique, final_peaks,
                                          max_step=self.max_step)
        return sampled

    async def tick(self, sample_due: bool) -> bool:
        """One round of the background task; True when this instance leads (and did the work)."""
        try:
            leading = await self.leader.hold()
        except RedisError as exc:
            self.redis_outage.failed("renewing the statistics leader lock", exc)
            return False
        if not leading:
            return False
        try:
            await self.sync_viewers()
            if sample_due:
                await self.sample()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.database_outage.failed("writing viewer counts", exc)
        else:
            self.database_outage.recovered()
        return True

    async def _run(self) -> None:
        next_sample = time.monotonic()
        while True:
            started = time.monotonic()
            sample_due = started >= next_sample
            try:
                leading = await self.tick(sample_due)
            except Exception:
                log.exception("viewer sync / statistics round failed")
                leading = False
            if sample_due and leading:
                next_sample = started + self.sample_seconds
            await asyncio.sleep(max(0.0, self.sync_seconds - (time.monotonic() - started)))

    async def start(self) -> None:
        """Run the sync and the sampler in the background (they work only while leading)."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop the background task and hand the lock over; never raises."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            await self.leader.release()
        except Exception as exc:  # the lock then lapses by itself within its TTL
            log.warning("could not release the statistics leader lock: %s", exc)

    # --- reads ---------------------------------------------------------------------------------

    async def stream_statistics(self, stream_id: int, viewer_id: int | None) -> StreamStatistics:
        """A stream's statistics, for whoever may see the stream (NotFound otherwise); the
        per-sample timeline only for its owner."""
        stream = await self.streams.get_stream(stream_id, viewer_id)
        totals = await statistics_db.stream_totals(self.db, stream.id)
        owner = viewer_id is not None and viewer_id == stream.user_id
        return StreamStatistics(
            stream_id=stream.id,
            peak_viewers=totals.peak_viewers,
            average_viewers=_average(totals.viewers_sum, totals.samples_count),
            unique_viewers=totals.unique_viewers,
            watch_time_seconds=round(totals.watch_time_seconds),
            duration_seconds=round(totals.duration_seconds),
            followers_gained=totals.followers_gained,
            timeline=await statistics_db.timeline(self.db, stream.id) if owner else [],
        )

    async def user_statistics(self, username: str, viewer_id: int | None) -> UserStatistics:
        """A channel's totals; its private streams count only when the user asks themself."""
        user = await users_db.get_user_by_username(self.db, username)
        totals = await statistics_db.channel_totals(self.db, user.id,
                                                    include_private=viewer_id == user.id)
        return UserStatistics(
            username=user.username,
            followers_count=user.followers_count,
            total_streams=totals.total_streams,
            total_stream_seconds=round(totals.total_stream_seconds),
            total_watch_time_seconds=round(totals.total_watch_time_seconds),
            peak_viewers=totals.peak_viewers,
            average_viewers=_average(totals.viewers_sum, totals.samples_count),
            last_stream_at=totals.last_stream_at,
        )
