"""Streams repository: create, read with privacy, list with keyset pagination, end, go live.

Privacy lives in SQL (`visible_to`): a private stream exists only for its owner and the viewers
the owner invited, in every query that can return one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sf.db.pagination import decode_cursor, encode_cursor
from sf.db.sql import Executor, set_clause
from sf.db.users import LISTED
from sf.errors import Conflict, Forbidden, NotFound, validation_error


@dataclass(frozen=True)
class Stream:
    """A stream with its owner's public fields and its category name."""

    id: int
    user_id: int
    title: str
    description: str
    thumbnail: str | None
    category_id: int | None
    category_name: str | None
    is_live: bool
    viewers_count: int
    is_private: bool
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime
    username: str
    user_avatar: str | None
    user_bio: str
    user_followers_count: int
    user_created_at: datetime
    user_is_live: bool


SELECT_STREAM = """
SELECT s.id, s.user_id, s.title, s.description, s.thumbnail, s.category_id,
       c.name AS category_name, s.is_live, s.viewers_count, s.is_private, s.started_at,
       s.ended_at, s.created_at, s.updated_at, u.username, u.avatar AS user_avatar,
       u.bio AS user_bio, u.followers_count AS user_followers_count,
       u.created_at AS user_created_at,
       ((s.is_live AND NOT s.is_private)
        OR EXISTS (SELECT 1 FROM streams l
                    WHERE l.user_id = s.user_id AND l.is_live AND NOT l.is_private))
           AS user_is_live
  FROM streams s
  JOIN users u ON u.id = s.user_id
  LEFT JOIN categories c ON c.id = s.category_id"""


def visible_to(param: str) -> str:
    """SQL: the stream `s` may be seen by the user whose id is bound to `param` (NULL: anonymous)."""
    return (f"(NOT s.is_private OR s.user_id = {param} OR EXISTS (SELECT 1 FROM allowed_viewers a"
            f" WHERE a.owner_id = s.user_id AND a.viewer_id = {param}))")


def stream_from_row(row: asyncpg.Record) -> Stream:
    return Stream(**{key: row[key] for key in Stream.__dataclass_fields__})


class Query:
    """Collects WHERE clauses and their positional arguments."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.where: list[str] = []

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


async def get_stream(db: Executor, stream_id: int, viewer_id: int | None) -> Stream:
    """A stream the viewer may see; NotFound otherwise (a hidden stream does not exist)."""
    row = await db.fetchrow(
        f"{SELECT_STREAM} WHERE s.id = $1 AND {visible_to('$2::bigint')} AND {LISTED}",
        stream_id, viewer_id)
    if row is None:
        raise NotFound("Stream not found")
    return stream_from_row(row)


async def load_stream(db: Executor, stream_id: int) -> Stream | None:
    """A stream regardless of privacy — for the platform itself, never for a viewer."""
    row = await db.fetchrow(f"{SELECT_STREAM} WHERE s.id = $1", stream_id)
    return stream_from_row(row) if row else None


async def create_stream(db: Executor, user_id: int, title: str, description: str = "",
                        category_id: int | None = None, is_private: bool = False) -> Stream:
    """A prepared stream: not live until its owner's RTMP publish starts."""
    try:
        stream_id = await db.fetchval(
            "INSERT INTO streams (user_id, title, description, category_id, is_private)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            user_id, title, description, category_id, is_private)
    except asyncpg.ForeignKeyViolationError:
        raise validation_error("category_id", "no such category") from None
    return await get_stream(db, stream_id, user_id)


async def _owned(db: Executor, stream_id: int, user_id: int) -> None:
    """Raise NotFound for a stream the user cannot see, Forbidden for one they do not own."""
    owner = await db.fetchval(
        f"SELECT s.user_id FROM streams s WHERE s.id = $1 AND {visible_to('$2::bigint')}",
        stream_id, user_id)
    if owner is None:
        raise NotFound("Stream not found")
    if owner != user_id:
        raise Forbidden("Only the owner may change this stream")


async def update_stream(db: Executor, stream_id: int, user_id: int,
                        changes: dict[str, Any]) -> Stream:
    await _owned(db, stream_id, user_id)
    if changes:
        assignments = set_clause(changes, 3)
        try:
            await db.execute(
                f"UPDATE streams SET {assignments}"
                " WHERE id = $1 AND user_id = $2", stream_id, user_id, *changes.values())
        except asyncpg.ForeignKeyViolationError:
            raise validation_error("category_id", "no such category") from None
    return await get_stream(db, stream_id, user_id)


async def end_stream(db: Executor, stream_id: int, user_id: int | None = None) -> bool:
    """End a stream (owner check when `user_id` is given); True if it was live until now."""
    if user_id is not None:
        await _owned(db, stream_id, user_id)
    was_live = await db.fetchval(
        """UPDATE streams s SET is_live = false, viewers_count = 0,
                  ended_at = COALESCE(s.ended_at, now()), updated_at = now()
             FROM (SELECT id, is_live FROM streams WHERE id = $1 FOR UPDATE) old
            WHERE s.id = old.id RETURNING old.is_live""", stream_id)
    return bool(was_live)


async def go_live(db: asyncpg.Connection, user_id: int, sealed_key: bytes | None,
                  media_node: str | None = None) -> int:
    """Mark the user's prepared stream live, or open one from their defaults; its id.

    Conflict when the user already has a live stream (one at a time).
    """
    try:
        stream_id = await db.fetchval(
            """UPDATE streams SET is_live = true, started_at = now(), stream_key = $2,
                      media_node = $3, last_seen_at = now(), disconnected_at = NULL,
                      updated_at = now()
                WHERE id = (SELECT id FROM streams WHERE user_id = $1 AND NOT is_live
                               AND started_at IS NULL AND ended_at IS NULL
                             ORDER BY created_at DESC, id DESC LIMIT 1)
                RETURNING id""", user_id, sealed_key, media_node)
        if stream_id is None:
            stream_id = await db.fetchval(
                """INSERT INTO streams (user_id, title, description, category_id, is_private,
                                        is_live, started_at, stream_key, media_node, last_seen_at)
                   SELECT u.id, COALESCE(NULLIF(ss.title, ''), u.username || '''s stream'),
                          COALESCE(ss.description, ''), ss.category_id,
                          COALESCE(ss.is_private, false), true, now(), $2, $3, now()
                     FROM users u LEFT JOIN stream_settings ss ON ss.user_id = u.id
                    WHERE u.id = $1
                   RETURNING id""", user_id, sealed_key, media_node)
    except asyncpg.UniqueViolationError:
        raise Conflict("This user is already live") from None
    if stream_id is None:
        raise NotFound("User not found")
    return int(stream_id)


async def lock_user_publishing(db: asyncpg.Connection, user_id: int) -> None:
    """Serialize the publishes of one user until the transaction ends."""
    await db.execute("SELECT pg_advisory_xact_lock($1)", user_id)


async def resume_after_disconnect(db: asyncpg.Connection, user_id: int, grace: int,
                                  media_node: str | None) -> int | None:
    """The user's stream whose publisher left, or whose media node died, less than `grace` s
    ago, taken up again on `media_node` (whichever node the encoder reached).

    None when there is none (one past its grace is ended first); Conflict when the user's live
    stream still has a connected publisher.
    """
    rows = await db.fetch(
        """SELECT id, disconnected_at,
                  disconnected_at > now() - make_interval(secs => $2) AS within_grace
             FROM streams
            WHERE user_id = $1
              AND (is_live OR (NOT is_live AND ended_at IS NULL AND disconnected_at IS NOT NULL))
            ORDER BY disconnected_at DESC NULLS FIRST, id DESC
              FOR UPDATE""", user_id, float(grace))
    if any(row["disconnected_at"] is None for row in rows):
        raise Conflict("This user is already live")
    resumed = None
    for row in rows:
        if resumed is None and row["within_grace"]:
            resumed = int(row["id"])
        else:
            await end_stream(db, row["id"])
    if resumed is not None:
        await db.execute(
            """UPDATE streams SET is_live = true, disconnected_at = NULL, last_seen_at = now(),
                      media_node = $2, updated_at = now() WHERE id = $1""", resumed, media_node)
    return resumed


async def mark_disconnected(db: Executor, stream_id: int) -> bool:
    """The publisher left (on_publish_done): the grace period starts; True if it was live."""
    result = await db.execute(
        "UPDATE streams SET disconnected_at = now() WHERE id = $1 AND is_live"
        " AND disconnected_at IS NULL", stream_id)
    return not result.endswith(" 0")


async def touch_live(db: Executor, stream_id: int) -> bool:
    """on_update: the publisher is still there; False when the stream was ended meanwhile."""
    found = await db.fetchval(
        "UPDATE streams SET last_seen_at = now() WHERE id = $1 AND is_live"
        " AND disconnected_at IS NULL RETURNING id", stream_id)
    return found is not None


async def expired_live_streams(db: Executor, grace: int, liveness_timeout: int) -> list[int]:
    """Live streams whose publisher left more than `grace` s ago, or that went silent, and
    offline streams (their media node died) not resumed within `grace`."""
    rows = await db.fetch(
        """SELECT id FROM streams
            WHERE is_live AND (disconnected_at < now() - make_interval(secs => $1)
                               OR last_seen_at < now() - make_interval(secs => $2))
           UNION ALL
           SELECT id FROM streams
            WHERE NOT is_live AND ended_at IS NULL AND disconnected_at IS NOT NULL
              AND disconnected_at < now() - make_interval(secs => $1)""",
        float(grace), float(liveness_timeout))
    return [int(row["id"]) for row in rows]


async def live_media_nodes(db: Executor) -> list[str]:
    """The media nodes (control URLs) that ingest live streams."""
    rows = await db.fetch("SELECT DISTINCT media_node FROM streams"
                          " WHERE is_live AND media_node IS NOT NULL")
    return [str(row["media_node"]) for row in rows]


async def take_offline(db: Executor, media_nodes: list[str]) -> list[int]:
    """The live streams of dead media nodes go offline: not live, not ended, disconnected
    (since now, unless their publisher had already left); their ids."""
    rows = await db.fetch(
        """UPDATE streams SET is_live = false, viewers_count = 0,
                  disconnected_at = COALESCE(disconnected_at, now()), updated_at = now()
            WHERE is_live AND media_node = ANY($1::text[]) RETURNING id""", media_nodes)
    return [int(row["id"]) for row in rows]


# --- transcoder admission (sf/services/admission.py) ----------------------------------------

RANGE_LOCK_CLASS = 0x5F72  # "_r": the first key of the two-key advisory locks of address ranges


async def lock_publish_range(db: asyncpg.Connection, address_range: str) -> None:
    """Serialize the go-lives from one address range until the transaction ends, so that its
    limits are counted exactly even when its publishes arrive at once."""
    await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", RANGE_LOCK_CLASS,
                     address_range)


async def go_lives_from_range(db: Executor, address_range: str) -> int:
    """Streams that went live from this range in the last hour (a resume is no new go-live)."""
    return int(await db.fetchval(
        "SELECT count(*) FROM streams WHERE publish_range = $1"
        " AND started_at > now() - interval '1 hour'", address_range))


async def ladders_from_range(db: Executor, address_range: str) -> int:
    """Live streams from this range with a connected publisher and a transcoded ladder."""
    return int(await db.fetchval(
        "SELECT count(*) FROM streams WHERE publish_range = $1 AND is_live"
        " AND disconnected_at IS NULL AND transcoded", address_range))


async def record_publish_origin(db: Executor, stream_id: int, address_range: str | None,
                                transcoded: bool) -> None:
    await db.execute("UPDATE streams SET publish_range = $2, transcoded = $3 WHERE id = $1",
                     stream_id, address_range, transcoded)


async def erase_publish_ranges_before(db: Executor, before: datetime) -> int:
    """Forget the address range of streams that are no longer live and went live (or were
    made) before `before` (address retention; the limits only read the last hour and live
    streams); how many were erased."""
    result = await db.execute(
        "UPDATE streams SET publish_range = NULL WHERE publish_range IS NOT NULL"
        " AND NOT is_live AND COALESCE(started_at, created_at) < $1", before)
    return int(result.split()[-1])


async def set_thumbnail(db: Executor, stream_id: int, url: str) -> Stream | None:
    found = await db.fetchval(
        "UPDATE streams SET thumbnail = $2, updated_at = now() WHERE id = $1 RETURNING id",
        stream_id, url)
    return await load_stream(db, stream_id) if found else None


async def live_stream_of(db: Executor, user_id: int) -> int | None:
    value = await db.fetchval("SELECT id FROM streams WHERE user_id = $1 AND is_live", user_id)
    return int(value) if value is not None else None


async def media_node_of(db: Executor, stream_id: int) -> str | None:
    value = await db.fetchval("SELECT media_node FROM streams WHERE id = $1", stream_id)
    return str(value) if value else None


# --- lists -----------------------------------------------------------------------------------


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def sees_only_public(db: Executor, viewer_id: int) -> bool:
    """Whether `visible_to(viewer)` admits public streams only: the viewer owns no private
    stream and was invited to no channel. Such a viewer's lists are the anonymous ones."""
    return bool(await db.fetchval(
        """SELECT NOT (EXISTS (SELECT 1 FROM streams WHERE user_id = $1 AND is_private)
                       OR EXISTS (SELECT 1 FROM allowed_viewers WHERE viewer_id = $1))""",
        viewer_id))


async def list_streams(db: Executor, *, viewer_id: int | None, is_live: bool | None = True,
                       category_id: int | None = None, username: str | None = None,
                       q: str | None = None, sort: str = "viewers", limit: int = 20,
                       cursor: str | None = None) -> tuple[list[Stream], str | None]:
    """One page of streams the viewer may see, and the cursor of the next page (or None).

    Keyset pagination on (sort key, id): rows inserted between pages never shift a page.
    """
    query = Query()
    query.where.append(visible_to(query.bind(viewer_id) + "::bigint"))
    query.where.append(LISTED)  # an account deleted for erasure shows no stream
    if is_live is not None:
        query.where.append("s.is_live" if is_live else "NOT s.is_live")
    if category_id is not None:
        query.where.append(f"s.category_id = {query.bind(category_id)}")
    if username is not None:
        query.where.append(f"lower(u.username) = lower({query.bind(username)})")
    if q:
        query.where.append(f"s.title ILIKE '%' || {query.bind(escape_like(q))} || '%'")
    kind: type = datetime
    if sort == "viewers":
        key, kind = "s.viewers_count", int
    elif sort == "started_at":
        key = "s.started_at" if is_live else "COALESCE(s.started_at, s.created_at)"
        kind = datetime
    else:
        key, kind = "s.created_at", datetime
    if cursor:
        value, last_id = decode_cursor(cursor, sort, kind)
        query.where.append(f"({key}, s.id) < ({query.bind(value)}, {query.bind(last_id)})")
    sql = (f"{SELECT_STREAM} WHERE {' AND '.join(query.where)}"
           f" ORDER BY {key} DESC, s.id DESC LIMIT {query.bind(limit + 1)}")
    rows = await db.fetch(sql, *query.args)
    streams = [stream_from_row(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = streams[-1]
        if sort == "viewers":
            value = last.viewers_count
        elif sort == "started_at":
            value = last.started_at if (is_live or last.started_at) else last.created_at
        else:
            value = last.created_at
        next_cursor = encode_cursor(sort, value, last.id)
    return streams, next_cursor
