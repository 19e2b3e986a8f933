"""Notifications repository: a user's list (keyset pages, unread count, marking read), their
channels per type and muted channels, and the go-live fan-out queue (planned once per
stream, worked through in batches by whichever node claims it).

A fan-out batch is one statement: the next followers after the cursor (not muted, not
deleted, invited when the stream is private), their settings for the type, their in-app
notifications inserted, and what they want besides (e-mail, push). The caller commits it
together with the cursor (`advance_fanout`), so a batch is done once or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sf.db import users as users_db
from sf.db.pagination import ROW_ID_RANGE, decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.db.users import User

PAGE_SORT = "notifications"


@dataclass(frozen=True)
class Channels:
    """Where one type of notification goes."""

    in_app: bool
    email: bool
    push: bool


@dataclass(frozen=True)
class Notification:
    id: int
    type: str
    created_at: datetime
    read_at: datetime | None
    data: dict[str, Any]


def _notification(row: asyncpg.Record) -> Notification:
    return Notification(row["id"], row["type"], row["created_at"], row["read_at"],
                        json.loads(row["data"]))


async def add(db: Executor, user_id: int, type_: str, data: dict[str, Any],
              channel_id: int | None = None) -> Notification:
    """One notification for one user."""
    row = await db.fetchrow(
        """INSERT INTO notifications (user_id, type, channel_id, data)
           VALUES ($1, $2, $3, $4::jsonb) RETURNING id, type, created_at, read_at, data::text""",
        user_id, type_, channel_id, json.dumps(data))
    return _notification(row)


async def list_page(db: Executor, user_id: int, limit: int, cursor: str | None,
                    unread_only: bool) -> tuple[list[Notification], str | None]:
    """A page of the user's notifications, newest first."""
    before = ROW_ID_RANGE[1]
    if cursor:
        _, before = decode_cursor(cursor, PAGE_SORT, int, ROW_ID_RANGE)
    rows = await db.fetch(
        """SELECT id, type, created_at, read_at, data::text FROM notifications
            WHERE user_id = $1 AND id < $2 AND (NOT $3 OR read_at IS NULL)
            ORDER BY id DESC LIMIT $4""",
        user_id, before, unread_only, limit + 1)
    items = [_notification(row) for row in rows[:limit]]
    next_cursor = (encode_cursor(PAGE_SORT, items[-1].id, items[-1].id)
                   if len(rows) > limit else None)
    return items, next_cursor


async def unread_count(db: Executor, user_id: int) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL", user_id))


async def mark_read(db: Executor, user_id: int, ids: list[int] | None) -> tuple[int, int]:
    """Mark the user's unread notifications read (these ids, or all): how many were marked,
    and the unread count after."""
    row = await db.fetchrow(
        """WITH marked AS (
               UPDATE notifications SET read_at = now()
                WHERE user_id = $1 AND read_at IS NULL AND ($2::bigint[] IS NULL OR id = ANY($2))
               RETURNING 1)
           SELECT (SELECT count(*) FROM marked) AS marked,
                  (SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL)
                  - (SELECT count(*) FROM marked) AS unread""",
        user_id, ids)
    return int(row["marked"]), int(row["unread"])


async def purge_older_than(db: Executor, days: int) -> int:
    """Delete notifications (and finished fan-outs) older than `days`; how many notifications."""
    result = await db.execute(
        "DELETE FROM notifications WHERE created_at < now() - make_interval(days => $1)", days)
    await db.execute(
        "DELETE FROM notification_fanouts WHERE status <> 'pending'"
        " AND created_at < now() - make_interval(days => $1)", days)
    return int(result.split()[-1])


# --- settings and mutes --------------------------------------------------------------------

async def settings_of(db: Executor, user_id: int) -> dict[str, Channels]:
    """The user's stored channels per type (types without a row: not included)."""
    rows = await db.fetch(
        "SELECT type, in_app, email, push FROM notification_settings WHERE user_id = $1", user_id)
    return {row["type"]: Channels(row["in_app"], row["email"], row["push"]) for row in rows}


async def save_settings(db: Executor, user_id: int, settings: dict[str, Channels]) -> None:
    await db.executemany(
        """INSERT INTO notification_settings (user_id, type, in_app, email, push)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (user_id, type) DO UPDATE
              SET in_app = $3, email = $4, push = $5, updated_at = now()""",
        [(user_id, type_, c.in_app, c.email, c.push) for type_, c in settings.items()])


async def stop_email(db: Executor, user_id: int, type_: str, defaults: Channels) -> None:
    """No more e-mail of this type (the one-click unsubscribe)."""
    await db.execute(
        """INSERT INTO notification_settings (user_id, type, in_app, email, push)
           VALUES ($1, $2, $3, false, $4)
           ON CONFLICT (user_id, type) DO UPDATE SET email = false, updated_at = now()""",
        user_id, type_, defaults.in_app, defaults.push)


async def mute(db: Executor, user_id: int, channel_id: int) -> None:
    await db.execute(
        "INSERT INTO notification_mutes (user_id, channel_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING", user_id, channel_id)


async def unmute(db: Executor, user_id: int, channel_id: int) -> None:
    await db.execute("DELETE FROM notification_mutes WHERE user_id = $1 AND channel_id = $2",
                     user_id, channel_id)


async def muted_page(db: Executor, user_id: int, limit: int,
                     cursor: str | None) -> tuple[list[User], str | None]:
    """The channels the user muted, newest mute first."""
    after_time, after_id = None, ROW_ID_RANGE[1]
    if cursor:
        after_time, after_id = decode_cursor(cursor, "mutes", datetime)
    rows = await db.fetch(
        f"""SELECT {users_db.USER_COLUMNS}, m.created_at AS muted_at FROM notification_mutes m
              JOIN users u ON u.id = m.channel_id
             WHERE m.user_id = $1 AND {users_db.LISTED}
               AND ($2::timestamptz IS NULL OR (m.created_at, u.id) < ($2, $3))
             ORDER BY m.created_at DESC, u.id DESC LIMIT $4""",
        user_id, after_time, after_id, limit + 1)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor("mutes", last["muted_at"], last["id"])
    return [users_db.user_from_row(row) for row in rows[:limit]], next_cursor


# --- the go-live fan-out -------------------------------------------------------------------

@dataclass(frozen=True)
class Fanout:
    """A claimed announcement: whose, of what, and how far it got."""

    id: int
    channel_id: int
    stream_id: int
    type: str
    data: dict[str, Any]
    is_private: bool
    after_user_id: int
    created_at: datetime


@dataclass(frozen=True)
class Told:
    """One follower of a batch: their new notification (None: not in-app) and what else
    they want."""

    user_id: int
    notification_id: int | None
    email: bool
    push: bool


async def plan_fanout(db: Executor, channel_id: int, stream_id: int, type_: str,
                      is_private: bool, repeat_seconds: int) -> Fanout | None:
    """Queue the announcement of a stream going live, once per stream: None when this stream
    was already announced (an encoder reconnect), or when another of the channel's streams was
    announced within `repeat_seconds` (recorded as 'skipped')."""
    row = await db.fetchrow(
        """WITH channel AS (
               SELECT u.id, u.username, s.title, s.thumbnail FROM users u
                 JOIN streams s ON s.user_id = u.id AND s.id = $2
                WHERE u.id = $1 AND u.deleted_at IS NULL),
           recent AS (
               SELECT 1 FROM notification_fanouts
                WHERE channel_id = $1 AND type = $3 AND status <> 'skipped'
                  AND created_at > now() - make_interval(secs => $5))
           INSERT INTO notification_fanouts (channel_id, stream_id, type, data, is_private, status,
                                             done_at)
           SELECT $1, $2, $3,
                  jsonb_build_object('stream_id', $2::bigint, 'username', c.username,
                                     'title', c.title, 'thumbnail', c.thumbnail),
                  $4,
                  CASE WHEN EXISTS (SELECT 1 FROM recent) THEN 'skipped' ELSE 'pending' END,
                  CASE WHEN EXISTS (SELECT 1 FROM recent) THEN now() END
             FROM channel c
           ON CONFLICT (stream_id, type) DO NOTHING
           RETURNING id, channel_id, stream_id, type, data::text, is_private, after_user_id,
                     created_at, status""",
        channel_id, stream_id, type_, is_private, float(repeat_seconds))
    if row is None or row["status"] != "pending":
        return None
    return _fanout(row)


def _fanout(row: asyncpg.Record) -> Fanout:
    return Fanout(row["id"], row["channel_id"], row["stream_id"], row["type"],
                  json.loads(row["data"]), row["is_private"], row["after_user_id"],
                  row["created_at"])


async def claim_fanout(db: Executor, lease_seconds: float) -> Fanout | None:
    """The oldest pending fan-out nobody holds (or whose holder's lease lapsed), leased."""
    row = await db.fetchrow(
        """WITH due AS (
               SELECT id FROM notification_fanouts
                WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until < now())
                ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           UPDATE notification_fanouts f SET claimed_until = now() + make_interval(secs => $1)
             FROM due WHERE f.id = due.id
           RETURNING f.id, f.channel_id, f.stream_id, f.type, f.data::text, f.is_private,
                     f.after_user_id, f.created_at, f.status""",
        lease_seconds)
    return None if row is None else _fanout(row)


async def fanout_batch(connection: asyncpg.Connection, fanout: Fanout, after_user_id: int,
                       batch: int, defaults: Channels) -> list[Told]:
    """Tell the next `batch` followers after `after_user_id` (in the caller's transaction):
    their in-app notifications inserted, and each one's wishes."""
    rows = await connection.fetch(
        """WITH targets AS (
               SELECT f.follower_id AS user_id FROM follows f
                 JOIN users u ON u.id = f.follower_id AND u.deleted_at IS NULL
                WHERE f.following_id = $1 AND f.follower_id > $2
                  AND NOT EXISTS (SELECT 1 FROM notification_mutes m
                                   WHERE m.user_id = f.follower_id AND m.channel_id = $1)
                  AND (NOT $3 OR EXISTS (SELECT 1 FROM allowed_viewers a
                                          WHERE a.owner_id = $1 AND a.viewer_id = f.follower_id))
                ORDER BY f.follower_id LIMIT $4),
           wishes AS (
               SELECT t.user_id, coalesce(s.in_app, $7) AS in_app,
                      coalesce(s.email, $8) AS email, coalesce(s.push, $9) AS push
                 FROM targets t
                 LEFT JOIN notification_settings s ON s.user_id = t.user_id AND s.type = $5),
           inserted AS (
               INSERT INTO notifications (user_id, type, channel_id, data, created_at)
               SELECT user_id, $5, $1, $6::jsonb, $10 FROM wishes WHERE in_app
               RETURNING id, user_id)
           SELECT w.user_id, i.id AS notification_id, w.email, w.push
             FROM wishes w LEFT JOIN inserted i USING (user_id)
            ORDER BY w.user_id""",
        fanout.channel_id, after_user_id, fanout.is_private, batch, fanout.type,
        json.dumps(fanout.data), defaults.in_app, defaults.email, defaults.push,
        fanout.created_at)
    return [Told(row["user_id"], row["notification_id"], row["email"], row["push"])
            for row in rows]


async def advance_fanout(connection: asyncpg.Connection, fanout_id: int, previous: int,
                         after_user_id: int, notified: int, done: bool,
                         lease_seconds: float) -> bool:
    """Move a fan-out's cursor from `previous` (in the batch's transaction); False when it is
    no longer there (the lease lapsed and another worker moved it: roll the batch back)."""
    result = await connection.execute(
        """UPDATE notification_fanouts
              SET after_user_id = $3, notified = notified + $4,
                  status = CASE WHEN $5 THEN 'done' ELSE status END,
                  done_at = CASE WHEN $5 THEN now() END,
                  claimed_until = CASE WHEN $5 THEN NULL
                                       ELSE now() + make_interval(secs => $6) END
            WHERE id = $1 AND after_user_id = $2 AND status = 'pending'""",
        fanout_id, previous, after_user_id, notified, done, lease_seconds)
    return not result.endswith(" 0")


async def verified_addresses(db: Executor, user_ids: list[int]) -> list[asyncpg.Record]:
    """id, username, sealed address of those users whose address is verified."""
    return await db.fetch(
        """SELECT id, username, email_key_id, email_ciphertext FROM users
            WHERE id = ANY($1) AND email_verified AND deleted_at IS NULL
              AND email_ciphertext IS NOT NULL ORDER BY id""", user_ids)


# --- account deletion ----------------------------------------------------------------------

async def hide_account(connection: asyncpg.Connection, user_id: int) -> None:
    """A deleted account's channel notices leave every follower's list, and nothing more is
    announced for it."""
    await connection.execute("DELETE FROM notifications WHERE channel_id = $1", user_id)
    await connection.execute(
        "UPDATE notification_fanouts SET status = 'skipped', done_at = now()"
        " WHERE channel_id = $1 AND status = 'pending'", user_id)


async def erase_account(connection: asyncpg.Connection, user_id: int) -> None:
    """An erased account's own notifications, settings and mutes."""
    await connection.execute("DELETE FROM notifications WHERE user_id = $1", user_id)
    await connection.execute("DELETE FROM notification_settings WHERE user_id = $1", user_id)
    await connection.execute("DELETE FROM notification_mutes WHERE user_id = $1", user_id)
