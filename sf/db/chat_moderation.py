"""Chat moderation repository: a channel's moderators, bans and timeouts, chat settings, the
hiding of messages by moderators, and the moderation log (tables of sql/014_chat.sql).

A channel is its owner's account (`users.id`). Writes that change who may do what in a
channel run in one transaction under the channel's moderation lock (`lock_channel`), so a
moderator removed by the owner cannot act in a race with the removal, and a user appointed
moderator cannot be banned by a moderator who read the old roles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sf.db import users as users_db
from sf.db.chat import SETTINGS_COLUMNS, SETTINGS_FIELDS, ChatSettings, settings_of
from sf.db.pagination import ROW_ID_RANGE, decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.db.users import User

OWNER, MODERATOR = "owner", "moderator"

# The moderation log's actions (`chat_moderation_log.action`).
MODERATOR_ADDED, MODERATOR_REMOVED = "moderator_added", "moderator_removed"
BAN, TIMEOUT, UNBAN = "ban", "timeout", "unban"
MESSAGE_DELETED, SETTINGS_CHANGED = "message_deleted", "settings_changed"
ACTIONS = (MODERATOR_ADDED, MODERATOR_REMOVED, BAN, TIMEOUT, UNBAN, MESSAGE_DELETED,
           SETTINGS_CHANGED)

@dataclass(frozen=True)
class UserRef:
    """A user as moderation answers name them: id, and name and avatar while the account is
    listed (None once its erasure was requested)."""

    id: int
    username: str | None
    avatar: str | None = None


@dataclass(frozen=True)
class Ban:
    """A ban (`expires_at` None) or a timeout of a user in a channel."""

    user: UserRef
    expires_at: datetime | None
    reason: str
    created_by: UserRef | None
    created_at: datetime

    @property
    def kind(self) -> str:
        return BAN if self.expires_at is None else TIMEOUT


@dataclass(frozen=True)
class LogEntry:
    """One moderation action: who (actor), whom (target), what (action, details), when."""

    id: int
    action: str
    actor: UserRef | None
    target: UserRef | None
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Message:
    """What moderating one chat message needs to know of it."""

    id: int
    stream_id: int
    channel_id: int
    user_id: int | None
    hidden: bool


def _ref(row: asyncpg.Record, prefix: str) -> UserRef | None:
    user_id = row[f"{prefix}_id"]
    if user_id is None:
        return None
    return UserRef(int(user_id), row[f"{prefix}_username"], row.get(f"{prefix}_avatar"))


def _listed(alias: str, column: str) -> str:
    """SQL: a column of the user `alias` while listed, else NULL (an account being erased)."""
    return f"CASE WHEN {alias}.deleted_at IS NULL THEN {alias}.{column} END"


# --- roles and the channel lock ----------------------------------------------------------------

async def lock_channel(connection: asyncpg.Connection, channel_id: int) -> None:
    """Serialise moderation writes of one channel until the transaction ends."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('chat-moderation', $1))", channel_id)


async def role_in(db: Executor, channel_id: int, user_id: int) -> str | None:
    """`owner`, `moderator`, or None: what `user_id` is in the channel's chat."""
    if channel_id == user_id:
        return OWNER
    found = await db.fetchval(
        "SELECT 1 FROM chat_moderators WHERE channel_id = $1 AND user_id = $2",
        channel_id, user_id)
    return MODERATOR if found else None


# --- moderators -------------------------------------------------------------------------------

async def add_moderator(db: Executor, channel_id: int, user_id: int) -> bool:
    """Appoint a moderator (idempotent); whether they were not one before."""
    result = await db.execute(
        "INSERT INTO chat_moderators (channel_id, user_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING", channel_id, user_id)
    return not result.endswith(" 0")


async def remove_moderator(db: Executor, channel_id: int, user_id: int) -> bool:
    """Remove a moderator (idempotent); whether they were one."""
    result = await db.execute(
        "DELETE FROM chat_moderators WHERE channel_id = $1 AND user_id = $2", channel_id, user_id)
    return not result.endswith(" 0")


async def list_moderators(db: Executor, channel_id: int, limit: int,
                          cursor: str | None) -> tuple[list[User], str | None]:
    """The channel's moderators, newest appointment first, keyset-paginated."""
    args: list[object] = [channel_id]
    keyset = ""
    if cursor:
        created, last_id = decode_cursor(cursor, "moderators", datetime)
        args += [created, last_id]
        keyset = "AND (m.created_at, m.user_id) < ($2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""SELECT {users_db.USER_COLUMNS}, m.created_at AS appointed_at
              FROM chat_moderators m JOIN users u ON u.id = m.user_id
             WHERE m.channel_id = $1 AND {users_db.LISTED} {keyset}
             ORDER BY m.created_at DESC, m.user_id DESC LIMIT ${len(args)}""", *args)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("moderators", page[-1]["appointed_at"], page[-1]["id"])
    return [users_db.user_from_row(row) for row in page], next_cursor


# --- bans and timeouts ------------------------------------------------------------------------

_BAN_SELECT = f"""
SELECT b.user_id AS user_id, {_listed('u', 'username')} AS user_username,
       {_listed('u', 'avatar')} AS user_avatar,
       b.expires_at, b.reason, b.created_at,
       b.created_by AS creator_id, {_listed('c', 'username')} AS creator_username,
       {_listed('c', 'avatar')} AS creator_avatar
  FROM chat_bans b JOIN users u ON u.id = b.user_id LEFT JOIN users c ON c.id = b.created_by"""


def _ban(row: asyncpg.Record) -> Ban:
    user = _ref(row, "user")
    assert user is not None
    return Ban(user, row["expires_at"], row["reason"], _ref(row, "creator"), row["created_at"])


async def put_ban(db: Executor, channel_id: int, user_id: int, duration_seconds: int | None,
                  reason: str, created_by: int) -> Ban:
    """Ban (no duration) or time out a user; a ban or timeout already there is replaced."""
    await db.execute(
        """INSERT INTO chat_bans (channel_id, user_id, expires_at, reason, created_by)
           VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)
           ON CONFLICT (channel_id, user_id) DO UPDATE
              SET expires_at = EXCLUDED.expires_at, reason = EXCLUDED.reason,
                  created_by = EXCLUDED.created_by, created_at = now()""",
        channel_id, user_id, None if duration_seconds is None else float(duration_seconds),
        reason, created_by)
    row = await db.fetchrow(f"{_BAN_SELECT} WHERE b.channel_id = $1 AND b.user_id = $2",
                            channel_id, user_id)
    return _ban(row)


async def lift_ban(db: Executor, channel_id: int, user_id: int) -> bool:
    """End a ban or timeout (idempotent); whether one was in force."""
    lifted = await db.fetchval(
        "DELETE FROM chat_bans WHERE channel_id = $1 AND user_id = $2"
        " RETURNING expires_at IS NULL OR expires_at > now()", channel_id, user_id)
    return bool(lifted)


async def list_bans(db: Executor, channel_id: int, limit: int,
                    cursor: str | None) -> tuple[list[Ban], str | None]:
    """The bans and timeouts in force in a channel, newest first, keyset-paginated."""
    args: list[object] = [channel_id]
    keyset = ""
    if cursor:
        created, last_id = decode_cursor(cursor, "bans", datetime)
        args += [created, last_id]
        keyset = "AND (b.created_at, b.user_id) < ($2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""{_BAN_SELECT}
             WHERE b.channel_id = $1 AND (b.expires_at IS NULL OR b.expires_at > now())
                   AND u.deleted_at IS NULL {keyset}
             ORDER BY b.created_at DESC, b.user_id DESC LIMIT ${len(args)}""", *args)
    page = [_ban(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("bans", page[-1].created_at, page[-1].user.id)
    return page, next_cursor


# --- messages ---------------------------------------------------------------------------------

async def hide_messages_of(db: Executor, channel_id: int, user_id: int) -> int:
    """Hide every visible message of a user in a channel ('cleared'); how many."""
    result = await db.execute(
        """UPDATE chat_messages SET hidden_at = now(), hidden_why = 'cleared'
            WHERE channel_id = $1 AND user_id = $2 AND hidden_at IS NULL""", channel_id, user_id)
    return int(result.split()[-1])


async def message_for_moderation(db: Executor, stream_id: int, message_id: int) -> Message | None:
    """A message of the stream, locked for the deletion (None: no such message there)."""
    row = await db.fetchrow(
        """SELECT id, stream_id, channel_id, user_id, hidden_at IS NOT NULL AS hidden
             FROM chat_messages WHERE id = $1 AND stream_id = $2 FOR UPDATE""",
        message_id, stream_id)
    if row is None:
        return None
    return Message(int(row["id"]), int(row["stream_id"]), int(row["channel_id"]),
                   row["user_id"], bool(row["hidden"]))


async def hide_message(db: Executor, message_id: int) -> bool:
    """Hide one message ('deleted'); False when it was hidden already."""
    result = await db.execute(
        "UPDATE chat_messages SET hidden_at = now(), hidden_why = 'deleted'"
        " WHERE id = $1 AND hidden_at IS NULL", message_id)
    return not result.endswith(" 0")


# --- settings ---------------------------------------------------------------------------------

async def update_settings(db: Executor, channel_id: int, changes: dict[str, Any]) -> ChatSettings:
    """Change some settings (the others keep their value, or the default); the result."""
    names = [name for name in SETTINGS_FIELDS if name in changes]
    columns = ", ".join(["channel_id", *names])
    values = ", ".join(f"${index}" for index in range(1, len(names) + 2))
    updates = ", ".join([*(f"{name} = EXCLUDED.{name}" for name in names), "updated_at = now()"])
    row = await db.fetchrow(
        f"""INSERT INTO chat_settings ({columns}) VALUES ({values})
            ON CONFLICT (channel_id) DO UPDATE SET {updates}
            RETURNING {SETTINGS_COLUMNS}""", channel_id, *(changes[name] for name in names))
    return settings_of(row)


# --- the moderation log -----------------------------------------------------------------------

async def record(db: Executor, channel_id: int, actor_id: int, target_user_id: int | None,
                 action: str, details: dict[str, Any] | None = None) -> None:
    """Add a moderation log entry (ids and the action's parameters, no text of a message)."""
    await db.execute(
        """INSERT INTO chat_moderation_log (channel_id, actor_id, target_user_id, action, details)
           VALUES ($1, $2, $3, $4, $5::jsonb)""",
        channel_id, actor_id, target_user_id, action, json.dumps(details or {}))


async def list_log(db: Executor, channel_id: int, limit: int,
                   cursor: str | None) -> tuple[list[LogEntry], str | None]:
    """A channel's moderation log, newest first, keyset-paginated by id."""
    args: list[object] = [channel_id]
    keyset = ""
    if cursor:
        last_id, _ = decode_cursor(cursor, "log", int, ROW_ID_RANGE)
        args.append(last_id)
        keyset = "AND l.id < $2"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""SELECT l.id, l.action, l.details, l.created_at,
                   l.actor_id, {_listed('a', 'username')} AS actor_username,
                   {_listed('a', 'avatar')} AS actor_avatar,
                   l.target_user_id AS target_id, {_listed('t', 'username')} AS target_username,
                   {_listed('t', 'avatar')} AS target_avatar
              FROM chat_moderation_log l
              LEFT JOIN users a ON a.id = l.actor_id
              LEFT JOIN users t ON t.id = l.target_user_id
             WHERE l.channel_id = $1 {keyset}
             ORDER BY l.id DESC LIMIT ${len(args)}""", *args)
    page = [LogEntry(int(row["id"]), row["action"], _ref(row, "actor"), _ref(row, "target"),
                     json.loads(row["details"]), row["created_at"]) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("log", page[-1].id, page[-1].id)
    return page, next_cursor


# --- erasure (sf/db/erasure.py) ---------------------------------------------------------------

async def hide_account(connection: asyncpg.Connection, user_id: int) -> None:
    """At an erasure request: the account moderates no channel and its channel has no
    moderators any more (like follows and invites, they do not come back on restore). Bans
    stay: deleting and restoring an account must not lift one."""
    await connection.execute(
        "DELETE FROM chat_moderators WHERE channel_id = $1 OR user_id = $1", user_id)


async def erase_account(connection: asyncpg.Connection, user_id: int) -> None:
    """At erasure: its channel's settings (blocked terms are its words), bans and moderation
    log go, and the bans it received; bans it made stay for the channels, by id; and log
    entries naming it in other channels keep the ids only (a ban's reason is dropped)."""
    await connection.execute("DELETE FROM chat_settings WHERE channel_id = $1", user_id)
    await connection.execute(
        "DELETE FROM chat_bans WHERE channel_id = $1 OR user_id = $1", user_id)
    await connection.execute("DELETE FROM chat_moderation_log WHERE channel_id = $1", user_id)
    await connection.execute(
        """UPDATE chat_moderation_log SET details = details - 'reason'
            WHERE (actor_id = $1 OR target_user_id = $1) AND details ? 'reason'""", user_id)
