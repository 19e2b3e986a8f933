"""Statistics repository: live viewer counts copied onto streams, viewer samples, per-stream
aggregates, followers gained while live, and the reads behind the statistics endpoints.

Writes for many streams are one statement each (arrays unnested), so a tick of the sampler
costs the same few round trips with ten live streams or ten thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sf.db.sql import Executor


@dataclass(frozen=True)
class ViewerSample:
    """One point of a stream's timeline."""

    ts: datetime
    viewers: int


@dataclass(frozen=True)
class LiveCount:
    """What one sample of a live stream records."""

    stream_id: int
    viewers: int         # the total now (the timeline, the average)
    dwelled: int         # of them, connected at least the minimum dwell (watch time)
    peak: int            # the highest total computed since the stream went live
    unique_viewers: int  # distinct dwelled viewers so far


@dataclass(frozen=True)
class StreamTotals:
    """A stream's aggregates (zeros until its first sample) and its duration so far."""

    stream_id: int
    peak_viewers: int
    viewers_sum: int
    samples_count: int
    watch_time_seconds: float
    unique_viewers: int
    followers_gained: int
    duration_seconds: float


@dataclass(frozen=True)
class ChannelTotals:
    """A user's streams (those that went live) taken together."""

    total_streams: int
    total_stream_seconds: float
    total_watch_time_seconds: float
    peak_viewers: int
    viewers_sum: int
    samples_count: int
    last_stream_at: datetime | None


async def live_stream_ids(db: Executor) -> list[int]:
    rows = await db.fetch("SELECT id FROM streams WHERE is_live ORDER BY id")
    return [int(row["id"]) for row in rows]


async def set_viewer_counts(db: Executor, totals: dict[int, int]) -> list[int]:
    """Copy live totals onto the live streams whose count differs; the ids that changed.

    `updated_at` stays: a viewer count is not an edit of the stream. The categories' totals
    follow through the trigger of 002.
    """
    if not totals:
        return []
    rows = await db.fetch(
        """UPDATE streams s SET viewers_count = t.viewers
             FROM unnest($1::bigint[], $2::integer[]) AS t(id, viewers)
            WHERE s.id = t.id AND s.is_live AND s.viewers_count <> t.viewers
           RETURNING s.id""", list(totals), list(totals.values()))
    return [int(row["id"]) for row in rows]


async def record_samples(db: Executor, ts: datetime | None, counts: list[LiveCount],
                         max_step: float, min_gap: float) -> int:
    """One sample per stream (taken at `ts`, or the database's now) and its aggregates; how
    many streams were sampled.

    Watch time grows by the dwelled viewers × the seconds since the stream's previous sample
    (or its start), at most `max_step`, so a pause in sampling cannot inflate it (and a viewer
    who stays less than the dwell adds nothing). `last_viewers` keeps the dwelled viewers, for
    the last interval at the end. The peak is the highest of every sample and of the peak
    Redis kept between samples. A stream whose last sample is less than `min_gap` s old is
    skipped: two samplers overlapping at a change of leader cannot count one interval twice.
    Unique viewers never decrease (the Redis HyperLogLog may expire or be lost).
    """
    if not counts:
        return 0
    count = await db.fetchval(
        """WITH input AS (
               SELECT t.stream_id, t.viewers, t.dwelled, t.peak, t.unique_viewers,
                      COALESCE($6::timestamptz, now()) AS ts
                 FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::integer[],
                             $5::integer[])
                      AS t(stream_id, viewers, dwelled, peak, unique_viewers)
           ), due AS (
               SELECT i.*, COALESCE(st.last_sample_at, s.started_at) AS previous
                 FROM input i
                 JOIN streams s ON s.id = i.stream_id AND s.is_live
                 LEFT JOIN stream_statistics st ON st.stream_id = i.stream_id
                WHERE st.last_sample_at IS NULL
                   OR i.ts >= st.last_sample_at + make_interval(secs => $8)
           ), inserted AS (
               INSERT INTO stream_viewer_samples (stream_id, ts, viewers)
               SELECT stream_id, ts, viewers FROM due
               ON CONFLICT DO NOTHING
               RETURNING stream_id
           ), aggregated AS (
               INSERT INTO stream_statistics AS st
                      (stream_id, peak_viewers, viewers_sum, samples_count, watch_time_seconds,
                       unique_viewers, last_sample_at, last_viewers)
               SELECT d.stream_id, GREATEST(d.viewers, d.peak), d.viewers, 1,
                      d.dwelled * LEAST(GREATEST(EXTRACT(epoch FROM d.ts - d.previous), 0), $7),
                      d.unique_viewers, d.ts, d.dwelled
                 FROM due d JOIN inserted USING (stream_id)
               ON CONFLICT (stream_id) DO UPDATE SET
                      peak_viewers = GREATEST(st.peak_viewers, EXCLUDED.peak_viewers),
                      viewers_sum = st.viewers_sum + EXCLUDED.viewers_sum,
                      samples_count = st.samples_count + 1,
                      watch_time_seconds = st.watch_time_seconds + EXCLUDED.watch_time_seconds,
                      unique_viewers = GREATEST(st.unique_viewers, EXCLUDED.unique_viewers),
                      last_sample_at = EXCLUDED.last_sample_at,
                      last_viewers = EXCLUDED.last_viewers
               RETURNING 1
           )
           SELECT count(*) FROM aggregated""",
        [c.stream_id for c in counts], [c.viewers for c in counts],
        [c.dwelled for c in counts], [c.peak for c in counts],
        [c.unique_viewers for c in counts], ts, float(max_step), float(min_gap))
    return int(count)


async def ended_unclosed_streams(db: Executor) -> list[int]:
    """Ended streams whose statistics are not closed yet (an offline stream, whose media node
    died, is not live but not ended either: it may resume, so its statistics stay open)."""
    rows = await db.fetch(
        """SELECT st.stream_id FROM stream_statistics st JOIN streams s ON s.id = st.stream_id
            WHERE NOT st.closed AND s.ended_at IS NOT NULL ORDER BY st.stream_id""")
    return [int(row["stream_id"]) for row in rows]


async def close_streams(db: Executor, unique: dict[int, int], peaks: dict[int, int],
                        max_step: float) -> int:
    """Close the statistics of ended streams; how many were closed.

    The interval between the last sample and the end counts with the last sample's dwelled
    viewers (at most `max_step` s), and the final unique count and peak are taken in.
    """
    if not unique:
        return 0
    rows = await db.fetch(
        """UPDATE stream_statistics st
              SET closed = true,
                  unique_viewers = GREATEST(st.unique_viewers, u.unique_viewers),
                  peak_viewers = GREATEST(st.peak_viewers, u.peak),
                  watch_time_seconds = st.watch_time_seconds + CASE
                      WHEN st.last_sample_at IS NULL OR s.ended_at IS NULL THEN 0
                      ELSE st.last_viewers * LEAST(GREATEST(
                          EXTRACT(epoch FROM s.ended_at - st.last_sample_at), 0), $3) END
             FROM unnest($1::bigint[], $2::integer[], $4::integer[])
                      AS u(stream_id, unique_viewers, peak),
                  streams s
            WHERE st.stream_id = u.stream_id AND s.id = st.stream_id
              AND NOT st.closed AND s.ended_at IS NOT NULL
           RETURNING st.stream_id""", list(unique), list(unique.values()), float(max_step),
        [peaks.get(sid, 0) for sid in unique])
    return len(rows)


async def count_new_follower(db: Executor, user_id: int) -> None:
    """A new follow of `user_id`: one follower gained by their live stream, if one is live."""
    await db.execute(
        """INSERT INTO stream_statistics AS st (stream_id, followers_gained)
           SELECT id, 1 FROM streams WHERE user_id = $1 AND is_live
           ON CONFLICT (stream_id) DO UPDATE SET followers_gained = st.followers_gained + 1""",
        user_id)


async def uncount_lost_follower(db: Executor, user_id: int, followed_at: datetime) -> None:
    """An unfollow of a follow made during `user_id`'s current live stream: no gain after all.

    So following and unfollowing over and over cannot inflate `followers_gained`.
    """
    await db.execute(
        """UPDATE stream_statistics st
              SET followers_gained = GREATEST(st.followers_gained - 1, 0)
             FROM streams s
            WHERE s.user_id = $1 AND s.is_live AND s.started_at <= $2
              AND st.stream_id = s.id""", user_id, followed_at)


async def stream_totals(db: Executor, stream_id: int) -> StreamTotals:
    row = await db.fetchrow(
        """SELECT s.id AS stream_id,
                  COALESCE(st.peak_viewers, 0) AS peak_viewers,
                  COALESCE(st.viewers_sum, 0) AS viewers_sum,
                  COALESCE(st.samples_count, 0) AS samples_count,
                  COALESCE(st.watch_time_seconds, 0) AS watch_time_seconds,
                  COALESCE(st.unique_viewers, 0) AS unique_viewers,
                  COALESCE(st.followers_gained, 0) AS followers_gained,
                  COALESCE(EXTRACT(epoch FROM COALESCE(s.ended_at, now()) - s.started_at), 0)
                      ::double precision AS duration_seconds
             FROM streams s LEFT JOIN stream_statistics st ON st.stream_id = s.id
            WHERE s.id = $1""", stream_id)
    if row is None:
        return StreamTotals(stream_id, 0, 0, 0, 0.0, 0, 0, 0.0)
    return StreamTotals(**dict(row))


async def timeline(db: Executor, stream_id: int) -> list[ViewerSample]:
    rows = await db.fetch(
        "SELECT ts, viewers FROM stream_viewer_samples WHERE stream_id = $1 ORDER BY ts",
        stream_id)
    return [ViewerSample(row["ts"], row["viewers"]) for row in rows]


async def channel_totals(db: Executor, user_id: int, include_private: bool) -> ChannelTotals:
    """Totals over the user's streams that went live; private ones only if `include_private`."""
    row = await db.fetchrow(
        """SELECT count(*) AS total_streams,
                  COALESCE(sum(EXTRACT(epoch FROM COALESCE(s.ended_at, now()) - s.started_at)),
                           0)::double precision AS total_stream_seconds,
                  COALESCE(sum(st.watch_time_seconds), 0)::double precision
                      AS total_watch_time_seconds,
                  COALESCE(max(st.peak_viewers), 0) AS peak_viewers,
                  COALESCE(sum(st.viewers_sum), 0)::bigint AS viewers_sum,
                  COALESCE(sum(st.samples_count), 0)::bigint AS samples_count,
                  max(s.started_at) AS last_stream_at
             FROM streams s LEFT JOIN stream_statistics st ON st.stream_id = s.id
            WHERE s.user_id = $1 AND s.started_at IS NOT NULL AND ($2 OR NOT s.is_private)""",
        user_id, include_private)
    return ChannelTotals(**dict(row))
