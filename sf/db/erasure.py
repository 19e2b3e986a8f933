"""Erasure repository: an account hidden at once on request, its personal data destroyed after
the grace period, its username released later, and the ledger of every step.

The steps are idempotent (each acts only on the state it expects), because `sf restore`
replays them onto a database restored from a backup older than they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from sf.db import chat as chat_db
from sf.db import chat_moderation as chat_moderation_db
from sf.db import notifications as notifications_db
from sf.db import push as push_db
from sf.db import statistics as statistics_db
from sf.db import webhooks as webhooks_db
from sf.db.sql import Executor
from sf.errors import NotFound

REQUESTED, RESTORED, ERASED, NAME_RELEASED = "requested", "restored", "erased", "name_released"

# The categories of data one step destroys, as the ledger records them (never the data).
HIDDEN_AT_REQUEST = ("sessions", "stream_key", "follows", "invites", "live_stream",
                     "webhook_deliveries", "push_subscriptions")
DESTROYED_AT_ERASURE = ("email", "password_hash", "bio", "avatar", "consents", "login_records",
                        "ip_addresses", "exports", "stream_settings", "stream_texts",
                        "thumbnails", "chat_authorship", "webhooks")

# A destroyed password hash: bcrypt rejects it as a hash, so no password ever matches it.
DESTROYED_PASSWORD_HASH = "!erased"


@dataclass(frozen=True)
class LedgerEntry:
    """One erasure step: whose (internal id only), what, which categories, when."""

    user_id: int
    event: str
    categories: tuple[str, ...]
    erase_after: datetime | None
    created_at: datetime


@dataclass
class Hidden:
    """What hiding an account changed beyond its own row: the users whose follower counts
    fell (their cached public views are stale) and its streams that were still open."""

    followed_usernames: list[str] = field(default_factory=list)
    open_streams: list[tuple[int, bool]] = field(default_factory=list)  # (id, was live)


@dataclass
class Destroyed:
    """Files the erased data lived in, to remove once the transaction committed."""

    avatar: str | None = None
    thumbnails: list[str] = field(default_factory=list)
    export_files: list[str] = field(default_factory=list)


def _entry(row: asyncpg.Record) -> LedgerEntry:
    return LedgerEntry(int(row["user_id"]), row["event"], tuple(row["categories"]),
                       row["erase_after"], row["created_at"])


async def record(db: Executor, user_id: int, event: str, categories: tuple[str, ...] = (),
                 erase_after: datetime | None = None, at: datetime | None = None) -> LedgerEntry:
    """Add a ledger row; a replay adds nothing twice (and an entry already there takes no id
    from the sequence either: a restored database stays exactly the backup's)."""
    row = await db.fetchrow(
        """INSERT INTO erasure_ledger (user_id, event, categories, erase_after, created_at)
           SELECT $1, $2, $3, $4, COALESCE($5, now())
            WHERE NOT EXISTS (SELECT 1 FROM erasure_ledger WHERE user_id = $1 AND event = $2
                                 AND created_at = COALESCE($5, now()))
           ON CONFLICT (user_id, event, created_at) DO NOTHING
           RETURNING user_id, event, categories, erase_after, created_at""",
        user_id, event, list(categories), erase_after, at)
    if row is None:
        return LedgerEntry(user_id, event, tuple(categories), erase_after, at or datetime.now(UTC))
    return _entry(row)


async def ledger(db: Executor, since: datetime | None = None) -> list[LedgerEntry]:
    """Every ledger row (newer than `since`), oldest first."""
    rows = await db.fetch(
        """SELECT user_id, event, categories, erase_after, created_at FROM erasure_ledger
            WHERE $1::timestamptz IS NULL OR created_at > $1 ORDER BY created_at, id""", since)
    return [_entry(row) for row in rows]


async def mark_deleted(db: Executor, user_id: int, grace_days: float,
                       erase_after: datetime | None = None) -> datetime:
    """Schedule the erasure (`erase_after`: now + grace unless given); when it falls due.
    NotFound for an account already deleted or gone."""
    value = await db.fetchval(
        """UPDATE users SET deleted_at = now(), updated_at = now(),
                  erase_after = COALESCE($3, now() + make_interval(secs => $2))
            WHERE id = $1 AND deleted_at IS NULL RETURNING erase_after""",
        user_id, float(grace_days) * 86400, erase_after)
    if value is None:
        raise NotFound("User not found")
    return value


async def hide_account(connection: asyncpg.Connection, user_id: int) -> Hidden:
    """Everything of a deleted account that others could reach, gone in one transaction: its
    stream key (an RTMP publish with it is refused from now on), follows both ways (every
    `followers_count` stays exact), invites both ways, its push subscriptions (no browser hears
    of it again); and its open streams, to be ended."""
    hidden = Hidden()
    await connection.execute("DELETE FROM stream_keys WHERE user_id = $1", user_id)
    await connection.execute("UPDATE streams SET stream_key = NULL WHERE user_id = $1", user_id)
    # Lock the counted rows in id order, as concurrent follows of several of them would.
    followed = await connection.fetch(
        """SELECT f.following_id, f.created_at, u.username FROM follows f
             JOIN users u ON u.id = f.following_id
            WHERE f.follower_id = $1 ORDER BY f.following_id FOR UPDATE OF f, u""", user_id)
    await connection.execute("DELETE FROM follows WHERE follower_id = $1", user_id)
    for row in followed:
        await connection.execute(
            "UPDATE users SET followers_count = followers_count - 1 WHERE id = $1",
            row["following_id"])
        await statistics_db.uncount_lost_follower(connection, row["following_id"],
                                                  row["created_at"])
        hidden.followed_usernames.append(row["username"])
    await connection.execute("DELETE FROM follows WHERE following_id = $1", user_id)
    await connection.execute("UPDATE users SET followers_count = 0 WHERE id = $1", user_id)
    await connection.execute(
        "DELETE FROM allowed_viewers WHERE owner_id = $1 OR viewer_id = $1", user_id)
    await chat_moderation_db.hide_account(connection, user_id)
    await notifications_db.hide_account(connection, user_id)
    await webhooks_db.hide_account(connection, user_id)
    await push_db.hide_account(connection, user_id)
    rows = await connection.fetch(
        """SELECT id, is_live FROM streams
            WHERE user_id = $1 AND ended_at IS NULL AND (is_live OR disconnected_at IS NOT NULL)
            ORDER BY id""", user_id)
    hidden.open_streams = [(int(row["id"]), bool(row["is_live"])) for row in rows]
    return hidden


async def restore_account(db: Executor, user_id: int) -> bool:
    """Cancel a pending erasure: the account is public again (what went at the request does
    not come back). False when there is none to cancel."""
    result = await db.execute(
        """UPDATE users SET deleted_at = NULL, erase_after = NULL, updated_at = now()
            WHERE id = $1 AND deleted_at IS NOT NULL AND erased_at IS NULL""", user_id)
    return not result.endswith(" 0")


async def due_for_erasure(db: Executor, limit: int) -> list[int]:
    """Accounts whose grace period is over and whose data is not yet destroyed."""
    rows = await db.fetch(
        """SELECT id FROM users WHERE deleted_at IS NOT NULL AND erased_at IS NULL
              AND erase_after <= now() ORDER BY erase_after, id LIMIT $1""", limit)
    return [int(row["id"]) for row in rows]


async def destroy_email(db: Executor, user_id: int) -> None:
    """The one place an erased account's e-mail addresses are destroyed: the sealed address and
    its digest (so the address is free for a new account), a pending change's address and
    every mailed link."""
    await db.execute(
        "UPDATE users SET email_key_id = NULL, email_ciphertext = NULL, email_digest = NULL,"
        " email_verified = false WHERE id = $1", user_id)
    await db.execute("DELETE FROM mail_tokens WHERE user_id = $1", user_id)


async def destroy_consents(db: Executor, user_id: int) -> None:
    """The erased account's consent records (which versions it accepted, when)."""
    await db.execute("DELETE FROM consents WHERE user_id = $1", user_id)


async def erase_personal_data(connection: asyncpg.Connection, user_id: int) -> Destroyed | None:
    """Destroy a deleted account's personal data (the row stays, anonymised, with its username
    reserved; its past streams and their statistics stay, without user text, pictures or
    addresses). None when the account is not deleted, or already erased."""
    row = await connection.fetchrow(
        """SELECT avatar FROM users WHERE id = $1 AND deleted_at IS NOT NULL
              AND erased_at IS NULL FOR UPDATE""", user_id)
    if row is None:
        return None
    destroyed = Destroyed(avatar=row["avatar"])
    await destroy_email(connection, user_id)
    await destroy_consents(connection, user_id)
    await connection.execute(
        """UPDATE users SET password_hash = $2, bio = '', avatar = NULL, erased_at = now(),
                  updated_at = now() WHERE id = $1""", user_id, DESTROYED_PASSWORD_HASH)
    await connection.execute("DELETE FROM login_records WHERE user_id = $1", user_id)
    destroyed.export_files = [
        str(file) for file in await connection.fetchval(
            "WITH gone AS (DELETE FROM exports WHERE user_id = $1 RETURNING file)"
            " SELECT coalesce(array_agg(file) FILTER (WHERE file IS NOT NULL), '{}') FROM gone",
            user_id)]
    await connection.execute("DELETE FROM stream_settings WHERE user_id = $1", user_id)
    await chat_moderation_db.erase_account(connection, user_id)
    await notifications_db.erase_account(connection, user_id)
    await webhooks_db.erase_account(connection, user_id)
    destroyed.thumbnails = [
        str(url) for url in await connection.fetchval(
            "SELECT coalesce(array_agg(thumbnail) FILTER (WHERE thumbnail IS NOT NULL), '{}')"
            " FROM streams WHERE user_id = $1", user_id)]
    # Titles and descriptions are the person's own words (they may name them): replaced.
    await connection.execute(
        """UPDATE streams SET title = 'Stream ' || id, description = '', thumbnail = NULL,
                  publish_range = NULL, stream_key = NULL, updated_at = now()
            WHERE user_id = $1""", user_id)
    # Chat messages stay in their streams' history, anonymous (the row stays, so the foreign
    # key's ON DELETE SET NULL never fires: done here).
    await chat_db.forget_author(connection, user_id)
    return destroyed


async def release_names(db: Executor, reserve_days: float) -> list[int]:
    """Erased accounts whose username was reserved long enough get `erased-<id>` instead,
    which frees the old name; their ids."""
    rows = await db.fetch(
        """UPDATE users SET username = 'erased-' || id, updated_at = now()
            WHERE erased_at IS NOT NULL AND username !~ '^erased-[0-9]+$'
              AND deleted_at <= now() - make_interval(secs => $1) RETURNING id""",
        float(reserve_days) * 86400)
    return [int(row["id"]) for row in rows]


async def release_name(db: Executor, user_id: int) -> bool:
    """Free one erased account's username now (a replayed release); False if nothing changed."""
    result = await db.execute(
        """UPDATE users SET username = 'erased-' || id, updated_at = now()
            WHERE id = $1 AND erased_at IS NOT NULL AND username !~ '^erased-[0-9]+$'""",
        user_id)
    return not result.endswith(" 0")


@dataclass(frozen=True)
class ErasureState:
    """Where an account stands: when it was created, deleted, erased."""

    created_at: datetime
    deleted_at: datetime | None
    erased_at: datetime | None


async def erasure_state(db: Executor, user_id: int) -> ErasureState | None:
    """An account's erasure state, or None when there is no such row."""
    row = await db.fetchrow(
        "SELECT created_at, deleted_at, erased_at FROM users WHERE id = $1", user_id)
    return ErasureState(row["created_at"], row["deleted_at"], row["erased_at"]) if row else None
