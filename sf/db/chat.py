"""Chat repository: messages (sent, read for history, purged after the retention), a channel's
chat settings as read, and a sender's standing in a channel (ban or timeout, moderator,
follow, account age), read fresh at every send.

A channel is its owner (users.id); a stream's chat belongs to the channel of its owner.
Hidden messages (`hidden_at`, set by moderation) never leave this module for a reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from sf.db.pagination import ROW_ID_RANGE, decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.db.users import LISTED

HISTORY_ON_JOIN = 50  # messages a socket gets on connect
PAGE_SORT = "chat"    # the history cursor's sort name


@dataclass(frozen=True)
class ChatSettings:
    """A channel's chat settings (`chat_settings`; the defaults when it has no row)."""

    enabled: bool = True
    slow_mode_seconds: int | None = None
    followers_only_minutes: int | None = None
    min_account_age_minutes: int = 0
    blocked_terms: tuple[str, ...] = ()
    updated_at: datetime | None = None


# What the owner sets (`PUT /api/channel/chat/settings`), as columns of `chat_settings`.
SETTINGS_FIELDS = ("enabled", "slow_mode_seconds", "followers_only_minutes",
                   "min_account_age_minutes", "blocked_terms")
SETTINGS_COLUMNS = ", ".join((*SETTINGS_FIELDS, "updated_at"))


def settings_of(row: asyncpg.Record | None) -> ChatSettings:
    if row is None:
        return ChatSettings()
    return ChatSettings(row["enabled"], row["slow_mode_seconds"], row["followers_only_minutes"],
                        row["min_account_age_minutes"], tuple(row["blocked_terms"]),
                        row["updated_at"])


@dataclass(frozen=True)
class ChatAuthor:
    """Who sent a message, as readers see them; `roles` are the author's roles now."""

    id: int
    username: str
    avatar: str | None
    roles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChatMessage:
    """A visible message. `user` is None when its author was erased (or asked for erasure)."""

    id: int
    stream_id: int
    user: ChatAuthor | None
    text: str
    sent_at: datetime


@dataclass(frozen=True)
class Standing:
    """What the send rules need to know of a signed-in sender in one channel."""

    user_id: int
    username: str
    avatar: str | None
    created_at: datetime
    is_owner: bool
    is_moderator: bool
    banned_until: datetime | None  # with `banned`: None is a ban, a time is a timeout
    banned: bool
    followed_at: datetime | None

    @property
    def roles(self) -> list[str]:
        return ["owner"] if self.is_owner else ["moderator"] if self.is_moderator else []


def _roles(channel_id: int, user_id: int, moderator: bool) -> list[str]:
    return ["owner"] if user_id == channel_id else ["moderator"] if moderator else []


async def get_settings(db: Executor, channel_id: int) -> ChatSettings:
    """A channel's chat settings (the defaults when it never changed them)."""
    row = await db.fetchrow(
        f"SELECT {SETTINGS_COLUMNS} FROM chat_settings WHERE channel_id = $1", channel_id)
    return settings_of(row)


async def is_moderator(db: Executor, channel_id: int, user_id: int) -> bool:
    """Whether the user moderates the channel (the owner is not a row: check that apart)."""
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM chat_moderators WHERE channel_id = $1 AND user_id = $2)",
        channel_id, user_id))


async def standing(db: Executor, channel_id: int, user_id: int) -> Standing | None:
    """A sender's standing in a channel, in one read; None when the account is gone (deleted
    or erasure requested). An expired timeout reads as no ban."""
    row = await db.fetchrow(
        f"""SELECT u.id, u.username, u.avatar, u.created_at,
                   EXISTS (SELECT 1 FROM chat_moderators m
                            WHERE m.channel_id = $1 AND m.user_id = u.id) AS is_moderator,
                   b.user_id IS NOT NULL AS banned, b.expires_at,
                   (SELECT f.created_at FROM follows f
                     WHERE f.follower_id = u.id AND f.following_id = $1) AS followed_at
              FROM users u
              LEFT JOIN chat_bans b ON b.channel_id = $1 AND b.user_id = u.id
                   AND (b.expires_at IS NULL OR b.expires_at > now())
             WHERE u.id = $2 AND {LISTED}""", channel_id, user_id)
    if row is None:
        return None
    return Standing(row["id"], row["username"], row["avatar"], row["created_at"],
                    row["id"] == channel_id, row["is_moderator"], row["expires_at"],
                    row["banned"], row["followed_at"])


async def insert_message(db: Executor, stream_id: int, channel_id: int, user_id: int,
                         text: str) -> tuple[int, datetime]:
    """Store a message; its id and time."""
    row = await db.fetchrow(
        """INSERT INTO chat_messages (stream_id, channel_id, user_id, text)
           VALUES ($1, $2, $3, $4) RETURNING id, sent_at""", stream_id, channel_id, user_id, text)
    return int(row["id"]), row["sent_at"]


# A visible message with its author (none when erased or erasure requested) and their roles.
_SELECT_VISIBLE = f"""
    SELECT m.id, m.stream_id, m.channel_id, m.text, m.sent_at,
           u.id AS user_id, u.username, u.avatar,
           EXISTS (SELECT 1 FROM chat_moderators cm
                    WHERE cm.channel_id = m.channel_id AND cm.user_id = u.id) AS is_moderator
      FROM chat_messages m
      LEFT JOIN users u ON u.id = m.user_id AND {LISTED}
     WHERE m.stream_id = $1 AND m.hidden_at IS NULL"""


def _message(row: asyncpg.Record) -> ChatMessage:
    author = None
    if row["user_id"] is not None:
        author = ChatAuthor(row["user_id"], row["username"], row["avatar"],
                            _roles(row["channel_id"], row["user_id"], row["is_moderator"]))
    return ChatMessage(row["id"], row["stream_id"], author, row["text"], row["sent_at"])


async def recent_messages(db: Executor, stream_id: int,
                          limit: int = HISTORY_ON_JOIN) -> list[ChatMessage]:
    """The last visible messages of a stream, oldest first (what a socket gets on connect)."""
    rows = await db.fetch(f"{_SELECT_VISIBLE} ORDER BY m.id DESC LIMIT $2", stream_id, limit)
    return [_message(row) for row in reversed(rows)]


async def message_page(db: Executor, stream_id: int, limit: int,
                       cursor: str | None) -> tuple[list[ChatMessage], str | None]:
    """A page of a stream's visible messages, newest first, by keyset on the id."""
    args: list[object] = [stream_id]
    keyset = ""
    if cursor:
        _, last_id = decode_cursor(cursor, PAGE_SORT, int, ROW_ID_RANGE)
        args.append(last_id)
        keyset = "AND m.id < $2"
    args.append(limit + 1)
    rows = await db.fetch(f"{_SELECT_VISIBLE} {keyset} ORDER BY m.id DESC LIMIT ${len(args)}",
                          *args)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(PAGE_SORT, page[-1]["id"], page[-1]["id"])
    return [_message(row) for row in page], next_cursor


async def delete_sent_before(db: Executor, before: datetime, batch: int) -> int:
    """Delete up to `batch` messages sent before `before` (the retention); how many."""
    result = await db.execute(
        """DELETE FROM chat_messages WHERE id IN (
               SELECT id FROM chat_messages WHERE sent_at < $1 LIMIT $2)""", before, batch)
    return int(result.split()[-1])


async def delete_moderation_log_before(db: Executor, before: datetime, batch: int) -> int:
    """Delete up to `batch` moderation log entries made before `before`; how many."""
    result = await db.execute(
        """DELETE FROM chat_moderation_log WHERE id IN (
               SELECT id FROM chat_moderation_log WHERE created_at < $1 LIMIT $2)""",
        before, batch)
    return int(result.split()[-1])


async def forget_author(db: Executor, user_id: int) -> int:
    """An erased account's messages lose their author (they stay, anonymous); how many."""
    result = await db.execute("UPDATE chat_messages SET user_id = NULL WHERE user_id = $1",
                              user_id)
    return int(result.split()[-1])
