"""Personal data exports: the rows of `exports` (pending, ready, failed) and the owner's data
read for an archive, a page of rows at a time from one consistent snapshot."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sf.db.pagination import decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.errors import Conflict, RateLimited

EXPORT_COLUMNS = "id, user_id, status, file, size_bytes, created_at, ready_at, expires_at"


@dataclass(frozen=True)
class Export:
    """One export request and, once built, its archive's file name (under `<media>/exports`)."""

    id: int
    user_id: int
    status: str  # pending | ready | failed
    file: str | None
    size_bytes: int | None
    created_at: datetime
    ready_at: datetime | None
    expires_at: datetime | None


def _export(row: asyncpg.Record) -> Export:
    return Export(**dict(row))


async def create(db: asyncpg.Pool, user_id: int, per_day: int) -> Export:
    """A new pending export of the user's data.

    Conflict while another of theirs is pending (the unique partial index decides, so two
    requests at once cannot both pass); RateLimited once `per_day` were requested in the last
    24 hours (their rows live at least that long: they expire after the download window).
    """
    async with db.acquire() as connection, connection.transaction():
        oldest = await connection.fetchval(
            """SELECT min(created_at) FROM (
                   SELECT created_at FROM exports
                    WHERE user_id = $1 AND created_at > now() - interval '1 day'
                    ORDER BY created_at DESC LIMIT $2) recent
                HAVING count(*) >= $2""", user_id, per_day)
        if oldest is not None:
            wait = await connection.fetchval(
                "SELECT ceil(EXTRACT(epoch FROM $1::timestamptz + interval '1 day' - now()))",
                oldest)
            raise RateLimited(max(1, int(wait)), f"At most {per_day} exports per 24 hours")
        try:
            row = await connection.fetchrow(
                f"INSERT INTO exports (user_id) VALUES ($1) RETURNING {EXPORT_COLUMNS}", user_id)
        except asyncpg.UniqueViolationError:
            raise Conflict("An export of your data is already being prepared") from None
    return _export(row)


async def get(db: Executor, export_id: int) -> Export | None:
    """An export of an account that is not deleted (a deleted account's archives serve nobody,
    even within its grace period: security.md#export-link-forgery)."""
    row = await db.fetchrow(
        f"SELECT {EXPORT_COLUMNS} FROM exports WHERE id = $1 AND EXISTS (SELECT 1 FROM users u"
        " WHERE u.id = exports.user_id AND u.deleted_at IS NULL)", export_id)
    return _export(row) if row else None


async def list_page(db: Executor, user_id: int, limit: int,
                    cursor: str | None) -> tuple[list[Export], str | None]:
    """The user's exports, newest first, keyset-paginated."""
    args: list[object] = [user_id]
    keyset = ""
    if cursor:
        created, last_id = decode_cursor(cursor, "exports", datetime)
        args += [created, last_id]
        keyset = "AND (created_at, id) < ($2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""SELECT {EXPORT_COLUMNS} FROM exports WHERE user_id = $1 {keyset}
             ORDER BY created_at DESC, id DESC LIMIT ${len(args)}""", *args)
    page = [_export(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("exports", page[-1].created_at, page[-1].id)
    return page, next_cursor


async def mark_ready(db: Executor, export_id: int, file: str, size_bytes: int,
                     ttl_hours: int) -> bool:
    """The archive is built: downloadable for `ttl_hours`. False when the export is no longer
    pending (marked failed as stale meanwhile): the caller then removes its file."""
    return await db.fetchval(
        """UPDATE exports SET status = 'ready', file = $2, size_bytes = $3, ready_at = now(),
                  expires_at = now() + make_interval(hours => $4)
            WHERE id = $1 AND status = 'pending' RETURNING true""",
        export_id, file, size_bytes, ttl_hours) is not None


async def mark_failed(db: Executor, export_id: int, ttl_hours: int) -> None:
    """The build failed: the row stays (the owner sees `failed`) until `ttl_hours` pass."""
    await db.execute(
        """UPDATE exports SET status = 'failed', expires_at = now() + make_interval(hours => $2)
            WHERE id = $1 AND status = 'pending'""", export_id, ttl_hours)


async def fail_stale(db: Executor, older_than_minutes: int, ttl_hours: int) -> list[int]:
    """Pending exports older than `older_than_minutes` (their node died building them) marked
    failed; their ids."""
    rows = await db.fetch(
        """UPDATE exports SET status = 'failed', expires_at = now() + make_interval(hours => $2)
            WHERE status = 'pending' AND created_at < now() - make_interval(mins => $1)
        RETURNING id""", older_than_minutes, ttl_hours)
    return [row["id"] for row in rows]


async def expired(db: Executor) -> list[Export]:
    """Exports past their `expires_at` (ready or failed), oldest first."""
    rows = await db.fetch(
        f"SELECT {EXPORT_COLUMNS} FROM exports WHERE expires_at <= now() ORDER BY expires_at")
    return [_export(row) for row in rows]


async def delete(db: Executor, export_ids: list[int]) -> int:
    result = await db.execute("DELETE FROM exports WHERE id = ANY($1::bigint[])", export_ids)
    return int(result.split()[-1])


async def delete_of_user(db: Executor, user_id: int) -> list[str]:
    """Delete every export of the user; the archive file names they named."""
    rows = await db.fetch("DELETE FROM exports WHERE user_id = $1 RETURNING file", user_id)
    return [row["file"] for row in rows if row["file"]]


async def files_of(db: Executor) -> set[str]:
    """The archive file names some export row still names."""
    rows = await db.fetch("SELECT file FROM exports WHERE file IS NOT NULL")
    return {row["file"] for row in rows}


# --- the owner's data, as the archive's JSON files -------------------------------------------

# Each is a list file of the archive: its name and the query of its rows ($1: the user's id),
# in a stable order so that paging through a cursor sees every row once.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("streams.json", """
        SELECT s.id, s.title, s.description, c.name AS category, s.is_private, s.is_live,
               s.started_at, s.ended_at, s.created_at, s.updated_at,
               COALESCE(st.peak_viewers, 0) AS peak_viewers,
               CASE WHEN COALESCE(st.samples_count, 0) = 0 THEN 0
                    ELSE round(st.viewers_sum::numeric / st.samples_count, 2)::float8
               END AS average_viewers,
               COALESCE(st.unique_viewers, 0) AS unique_viewers,
               round(COALESCE(st.watch_time_seconds, 0))::bigint AS watch_time_seconds,
               COALESCE(st.followers_gained, 0) AS followers_gained
          FROM streams s
          LEFT JOIN stream_statistics st ON st.stream_id = s.id
          LEFT JOIN categories c ON c.id = s.category_id
         WHERE s.user_id = $1 ORDER BY s.id"""),
    ("following.json", """
        SELECT u.username, f.created_at AS followed_at
          FROM follows f JOIN users u ON u.id = f.following_id
         WHERE f.follower_id = $1 ORDER BY f.id"""),
    ("followers.json", """
        SELECT u.username, f.created_at AS followed_at
          FROM follows f JOIN users u ON u.id = f.follower_id
         WHERE f.following_id = $1 ORDER BY f.id"""),
    ("invites.json", """
        SELECT 'given' AS direction, u.username, a.created_at
          FROM allowed_viewers a JOIN users u ON u.id = a.viewer_id WHERE a.owner_id = $1
        UNION ALL
        SELECT 'received', u.username, a.created_at
          FROM allowed_viewers a JOIN users u ON u.id = a.owner_id WHERE a.viewer_id = $1
         ORDER BY 1, 3, 2"""),
    ("sessions.json", """
        SELECT kind, host(ip) AS ip, user_agent, created_at
          FROM login_records WHERE user_id = $1 ORDER BY created_at, id"""),
    ("notifications.json", """
        SELECT type, data, created_at, read_at
          FROM notifications WHERE user_id = $1 ORDER BY id"""),
    ("notification_settings.json", """
        SELECT type, in_app, email, push, updated_at
          FROM notification_settings WHERE user_id = $1 ORDER BY type"""),
    ("notification_mutes.json", """
        SELECT u.username, m.created_at
          FROM notification_mutes m JOIN users u ON u.id = m.channel_id
         WHERE m.user_id = $1 ORDER BY m.created_at, u.id"""),
    ("push_subscriptions.json", """
        SELECT substring(endpoint from '^[a-z]+://[^/]+') AS push_service, created_at,
               last_success_at
          FROM push_subscriptions WHERE user_id = $1 ORDER BY id"""),
)


# Columns of the sections that hold JSON (jsonb reaches Python as text): written as JSON values.
JSON_COLUMNS = frozenset({"data"})


def _plain(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    for name in JSON_COLUMNS & item.keys():
        if isinstance(item[name], str):
            item[name] = json.loads(item[name])
    return item


async def section_pages(connection: asyncpg.Connection, query: str, user_id: int,
                        page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
    """The rows of one section, `page_size` at a time, through a server-side cursor (call it
    inside a transaction: the archive reads one snapshot, and memory holds one page)."""
    page: list[dict[str, Any]] = []
    async for row in connection.cursor(query, user_id, prefetch=page_size):
        page.append(_plain(row))
        if len(page) >= page_size:
            yield page
            page = []
    if page:
        yield page


async def consents(connection: asyncpg.Connection, user_id: int) -> list[dict[str, Any]]:
    """The user's privacy-policy acceptances (version, purpose, time), oldest first."""
    rows = await connection.fetch(
        "SELECT version, purpose, accepted_at FROM consents WHERE user_id = $1"
        " ORDER BY accepted_at, id", user_id)
    return [dict(row) for row in rows]
