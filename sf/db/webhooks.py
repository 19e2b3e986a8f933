"""Webhooks repository: a user's endpoints (the signing secret sealed at rest) and the durable
queue of deliveries to them, claimed by any node's sender with `FOR UPDATE SKIP LOCKED` under
a lease, then marked delivered, retried later, or given up (like `sf.db.outbox`).

Every read and change of a webhook names its owner: another user's webhook is "not found".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.pagination import ROW_ID_RANGE, decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.errors import Conflict, NotFound
from sf.security import EmailCipher

SECRET = "webhook_secret"  # the purpose the secret is sealed for (bound in the AES-GCM data)
PURGED_AT_HIDE = "account deleted"

WEBHOOK_COLUMNS = """w.id, w.user_id, w.url, w.events, w.enabled, w.disabled_reason,
    w.consecutive_failures, w.created_at, w.updated_at, w.disabled_at"""
DELIVERY_COLUMNS = """d.id, d.webhook_id, d.event_id, d.type, d.status, d.attempts,
    d.response_code, d.last_error, d.created_at, d.last_attempt_at, d.next_attempt_at,
    d.delivered_at"""


@dataclass(frozen=True)
class Webhook:
    """An endpoint as its owner sees it (never the secret)."""

    id: int
    user_id: int
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one webhook, as its owner sees it."""

    id: int
    webhook_id: int
    event_id: uuid.UUID
    type: str
    status: str
    attempts: int
    response_code: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a sender holds under its lease: where it goes, signed with what, and which
    attempt this is."""

    id: int
    webhook_id: int
    user_id: int
    url: str
    secret: bytes
    event_id: uuid.UUID
    type: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class FailureRun:
    """A webhook's run of failed attempts after one more: how many, for how long."""

    consecutive_failures: int
    failing_seconds: float
    enabled: bool


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(row["id"], row["user_id"], row["url"], list(row["events"]), row["enabled"],
                   row["disabled_reason"], row["consecutive_failures"], row["created_at"],
                   row["updated_at"], row["disabled_at"])


def _delivery(row: asyncpg.Record) -> Delivery:
    pending = row["status"] == "pending"
    return Delivery(row["id"], row["webhook_id"], row["event_id"], row["type"], row["status"],
                    row["attempts"], row["response_code"], row["last_error"], row["created_at"],
                    row["last_attempt_at"], row["next_attempt_at"] if pending else None,
                    row["delivered_at"])


# --- the owner's webhooks ---------------------------------------------------------------------

async def create(db: asyncpg.Pool, cipher: EmailCipher, user_id: int, url: str,
                 events: list[str], secret: str, limit: int) -> Webhook:
    """A new webhook; Conflict when the user already has `limit` of them (counted under a lock
    of the user's row, so two concurrent creations cannot both pass the count)."""
    key_id, sealed = cipher.seal_bytes(secret.encode(), user_id, SECRET)
    async with db.acquire() as connection, connection.transaction():
        await connection.execute("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id)
        count = await connection.fetchval("SELECT count(*) FROM webhooks WHERE user_id = $1",
                                          user_id)
        if count >= limit:
            raise Conflict(f"You have {limit} webhooks, the most an account may have")
        row = await connection.fetchrow(
            f"""INSERT INTO webhooks AS w (user_id, url, events, secret_key_id, secret)
                VALUES ($1, $2, $3, $4, $5) RETURNING {WEBHOOK_COLUMNS}""",
            user_id, url, events, key_id, sealed)
    return _webhook(row)


async def list_for_user(db: Executor, user_id: int) -> list[Webhook]:
    """The user's webhooks, oldest first (at most the per-user cap: no pages needed)."""
    rows = await db.fetch(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.user_id = $1"
                          " ORDER BY w.id", user_id)
    return [_webhook(row) for row in rows]


async def get(db: Executor, user_id: int, webhook_id: int) -> Webhook:
    """One of the user's webhooks; NotFound for any other id (someone else's too)."""
    row = await db.fetchrow(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks w"
                            " WHERE w.id = $1 AND w.user_id = $2", webhook_id, user_id)
    if row is None:
        raise NotFound("Webhook not found")
    return _webhook(row)


async def update(db: Executor, user_id: int, webhook_id: int, url: str | None,
                 events: list[str] | None, enable: bool | None) -> Webhook:
    """Change the url and events (those given); `enable=True` re-enables a disabled webhook
    and forgets its failures, `enable=False` disables it (its pending deliveries stay, sent
    once it is enabled again unless they are too old by then)."""
    row = await db.fetchrow(
        f"""UPDATE webhooks w SET url = COALESCE($3, url), events = COALESCE($4, events),
                   enabled = COALESCE($5, enabled),
                   disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason
                                          WHEN $5 THEN NULL ELSE 'disabled by its owner' END,
                   disabled_at = CASE WHEN $5 IS NULL THEN disabled_at
                                      WHEN $5 THEN NULL ELSE COALESCE(disabled_at, now()) END,
                   consecutive_failures = CASE WHEN $5 THEN 0 ELSE consecutive_failures END,
                   failing_since = CASE WHEN $5 THEN NULL ELSE failing_since END,
                   updated_at = now()
             WHERE w.id = $1 AND w.user_id = $2 RETURNING {WEBHOOK_COLUMNS}""",
        webhook_id, user_id, url, events, enable)
    if row is None:
        raise NotFound("Webhook not found")
    if enable:
        # What fell past its give-up time while the webhook was off is not sent late.
        await db.execute(
            """UPDATE webhook_deliveries
                  SET status = 'failed', last_error = COALESCE(last_error || ' ', '')
                                                      || '(given up while disabled)'
                WHERE webhook_id = $1 AND status = 'pending' AND give_up_at <= now()""",
            webhook_id)
    return _webhook(row)


async def delete(db: Executor, user_id: int, webhook_id: int) -> None:
    """Delete one of the user's webhooks and its deliveries; NotFound for any other id."""
    result = await db.execute("DELETE FROM webhooks WHERE id = $1 AND user_id = $2",
                              webhook_id, user_id)
    if result.endswith(" 0"):
        raise NotFound("Webhook not found")


async def list_deliveries(db: Executor, user_id: int, webhook_id: int, limit: int,
                          cursor: str | None) -> tuple[list[Delivery], str | None]:
    """A page of one of the user's webhooks' deliveries, newest first."""
    await get(db, user_id, webhook_id)
    before = 2**63 - 1
    if cursor:
        _, before = decode_cursor(cursor, "deliveries", int, ROW_ID_RANGE)
    rows = await db.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
             WHERE d.webhook_id = $1 AND d.id < $2 ORDER BY d.id DESC LIMIT $3""",
        webhook_id, before, limit + 1)
    page = [_delivery(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("deliveries", page[-1].id, page[-1].id)
    return page, next_cursor


async def redeliver(db: Executor, user_id: int, webhook_id: int, delivery_id: int,
                    give_up_seconds: float) -> Delivery:
    """Queue a delivery again, due now, with its event id and body (another window of
    attempts). NotFound unless it is a delivery of one of the user's webhooks; Conflict while
    it is being sent or while the webhook is disabled (it would never go)."""
    row = await db.fetchrow(
        f"""WITH target AS (
                SELECT d.id, d.status, w.enabled FROM webhook_deliveries d
                  JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.id = $3 AND d.webhook_id = $2 AND w.user_id = $1
                   FOR UPDATE OF d),
            changed AS (
                UPDATE webhook_deliveries d SET status = 'pending', attempts = 0,
                       next_attempt_at = now(), delivered_at = NULL,
                       give_up_at = now() + make_interval(secs => $4)
                  FROM target t
                 WHERE d.id = t.id AND t.status <> 'sending' AND t.enabled
                RETURNING {DELIVERY_COLUMNS})
            SELECT t.status AS old_status, t.enabled AS webhook_enabled, c.*
              FROM target t LEFT JOIN changed c ON true""",
        user_id, webhook_id, delivery_id, give_up_seconds)
    if row is None:
        raise NotFound("Delivery not found")
    if not row["webhook_enabled"]:
        raise Conflict("The webhook is disabled: enable it first")
    if row["id"] is None:
        raise Conflict("The delivery is being sent right now")
    return _delivery(row)


# --- events in --------------------------------------------------------------------------------

async def subscribed_username(db: Executor, user_id: int, event_type: str) -> str | None:
    """The user's name when one of their enabled webhooks takes `event_type`, else None (the
    one cheap look-up an event of a user without webhooks costs)."""
    value: str | None = await db.fetchval(
        """SELECT u.username FROM users u
            WHERE u.id = $1 AND EXISTS (SELECT 1 FROM webhooks w WHERE w.user_id = u.id
                                          AND w.enabled AND $2 = ANY (w.events))""",
        user_id, event_type)
    return value


async def subscribers(db: Executor, event_type: str) -> list[int]:
    """The users with an enabled webhook that takes `event_type`."""
    rows = await db.fetch("SELECT DISTINCT user_id FROM webhooks WHERE enabled"
                          " AND $1 = ANY (events)", event_type)
    return [row["user_id"] for row in rows]


async def username_of(db: Executor, user_id: int) -> str | None:
    value: str | None = await db.fetchval("SELECT username FROM users WHERE id = $1", user_id)
    return value


async def enqueue(db: Executor, user_id: int, event_type: str, event_id: uuid.UUID,
                  body: bytes, give_up_seconds: float, dedup_key: str | None = None,
                  dedup_seconds: float = 0) -> int:
    """Queue one event for each of the user's enabled webhooks that takes its type; an event
    id a webhook already has is not queued again, nor an event whose `dedup_key` the webhook
    got within `dedup_seconds`. How many deliveries were queued."""
    result = await db.execute(
        """INSERT INTO webhook_deliveries (webhook_id, event_id, type, body, dedup_key, give_up_at)
           SELECT w.id, $3, $2, $4, $5, now() + make_interval(secs => $6) FROM webhooks w
            WHERE w.user_id = $1 AND w.enabled AND $2 = ANY (w.events)
              AND ($5::text IS NULL OR NOT EXISTS (
                      SELECT 1 FROM webhook_deliveries d
                       WHERE d.webhook_id = w.id AND d.dedup_key = $5
                         AND d.created_at > now() - make_interval(secs => $7)))
           ON CONFLICT (webhook_id, event_id) DO NOTHING""",
        user_id, event_type, event_id, body.decode(), dedup_key, give_up_seconds, dedup_seconds)
    return int(result.split()[-1])


# --- the sender -------------------------------------------------------------------------------

async def claim(db: Executor, cipher: EmailCipher, batch: int, lease_seconds: float,
                per_webhook: int = 2**31 - 1) -> list[ClaimedDelivery]:
    """Up to `batch` due deliveries of enabled webhooks, marked 'sending' until the lease ends
    (pending ones whose time has come, and 'sending' ones whose sender died); rows another
    sender holds are skipped, and so are the webhooks with `per_webhook` deliveries in flight
    already (counted as committed: claim one at a time to hold each webhook to it)."""
    rows = await db.fetch(
        """WITH due AS (
               SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                WHERE w.enabled
                  AND ((d.status = 'pending' AND d.next_attempt_at <= now()
                        AND d.give_up_at > now())
                       OR (d.status = 'sending' AND d.claimed_until < now()))
                  AND (SELECT count(*) FROM webhook_deliveries s
                        WHERE s.webhook_id = d.webhook_id AND s.status = 'sending'
                          AND s.claimed_until >= now()) < $3
                ORDER BY d.next_attempt_at, d.id
                LIMIT $1
                FOR UPDATE OF d SKIP LOCKED),
           claimed AS (
               UPDATE webhook_deliveries d
                  SET status = 'sending', attempts = d.attempts + 1,
                      claimed_until = now() + make_interval(secs => $2)
                 FROM due WHERE d.id = due.id
               RETURNING d.id, d.webhook_id, d.event_id, d.type, d.body, d.attempts)
           SELECT c.*, w.user_id, w.url, w.secret_key_id, w.secret
             FROM claimed c JOIN webhooks w ON w.id = c.webhook_id""",
        batch, lease_seconds, per_webhook)
    return [ClaimedDelivery(row["id"], row["webhook_id"], row["user_id"], row["url"],
                            cipher.open_bytes(row["secret_key_id"], row["secret"],
                                              row["user_id"], SECRET),
                            row["event_id"], row["type"], row["body"].encode(), row["attempts"])
            for row in rows]


async def mark_delivered(db: Executor, delivery: ClaimedDelivery, response_code: int) -> bool:
    """Record a delivered attempt, and the webhook's run of failures ends. False when the
    claim was no longer ours (its lease lapsed and another sender took it)."""
    row = await db.fetchrow(
        """WITH done AS (
               UPDATE webhook_deliveries SET status = 'delivered', claimed_until = NULL,
                      delivered_at = now(), last_attempt_at = now(), response_code = $3,
                      last_error = NULL
                WHERE id = $1 AND status = 'sending' AND attempts = $2 RETURNING webhook_id)
           UPDATE webhooks w SET consecutive_failures = 0, failing_since = NULL
             FROM done WHERE w.id = done.webhook_id RETURNING w.id""",
        delivery.id, delivery.attempts, response_code)
    return row is not None


async def record_failure(connection: asyncpg.Connection, delivery: ClaimedDelivery,
                         response_code: int | None, error: str,
                         retry_in_seconds: float) -> FailureRun | None:
    """A failed attempt, in the caller's transaction: the delivery is due again in
    `retry_in_seconds`, or 'failed' when that is past its give-up time; the webhook's run of
    failures grows. None when the claim was no longer ours."""
    updated = await connection.fetchval(
        """UPDATE webhook_deliveries
              SET claimed_until = NULL, last_attempt_at = now(), response_code = $3,
                  last_error = $4,
                  status = CASE WHEN now() + make_interval(secs => $5) >= give_up_at
                                THEN 'failed' ELSE 'pending' END,
                  next_attempt_at = now() + make_interval(secs => $5)
            WHERE id = $1 AND status = 'sending' AND attempts = $2 RETURNING id""",
        delivery.id, delivery.attempts, response_code, error[:500], retry_in_seconds)
    if updated is None:
        return None
    row = await connection.fetchrow(
        """UPDATE webhooks SET consecutive_failures = consecutive_failures + 1,
                  failing_since = COALESCE(failing_since, now())
            WHERE id = $1
        RETURNING consecutive_failures, enabled,
                  extract(epoch FROM now() - failing_since)::float8 AS failing_seconds""",
        delivery.webhook_id)
    if row is None:
        return None
    return FailureRun(row["consecutive_failures"], row["failing_seconds"], row["enabled"])


async def disable_failing(connection: asyncpg.Connection, webhook_id: int,
                          reason: str) -> Webhook | None:
    """Disable a webhook that keeps failing, in the caller's transaction: its deliveries not
    yet made are given up. None when it was disabled already (by another sender)."""
    row = await connection.fetchrow(
        f"""UPDATE webhooks w SET enabled = false, disabled_reason = $2, disabled_at = now(),
                   updated_at = now()
             WHERE w.id = $1 AND w.enabled RETURNING {WEBHOOK_COLUMNS}""",
        webhook_id, reason)
    if row is None:
        return None
    await connection.execute(
        """UPDATE webhook_deliveries SET status = 'failed', claimed_until = NULL,
                  last_error = COALESCE(last_error, '') || ' (webhook disabled)'
            WHERE webhook_id = $1 AND status IN ('pending', 'sending')""", webhook_id)
    return _webhook(row)


async def purge_old(db: Executor, older_than_seconds: float) -> int:
    """Delete deliveries made longer ago than this, whatever their state; how many went."""
    result = await db.execute(
        "DELETE FROM webhook_deliveries WHERE created_at < now() - make_interval(secs => $1)",
        older_than_seconds)
    return int(result.split()[-1])


# --- accounts ---------------------------------------------------------------------------------

async def hide_account(connection: asyncpg.Connection, user_id: int) -> None:
    """A deleted account's webhooks stop at once: disabled, their undelivered events dropped."""
    await connection.execute(
        """UPDATE webhooks SET enabled = false, disabled_reason = $2,
                  disabled_at = COALESCE(disabled_at, now()), updated_at = now()
            WHERE user_id = $1""", user_id, PURGED_AT_HIDE)
    await connection.execute(
        """DELETE FROM webhook_deliveries d USING webhooks w
            WHERE w.id = d.webhook_id AND w.user_id = $1
              AND d.status IN ('pending', 'sending')""", user_id)


async def erase_account(connection: asyncpg.Connection, user_id: int) -> None:
    """An erased account's webhooks (URLs, sealed secrets) and every delivery to them go."""
    await connection.execute("DELETE FROM webhooks WHERE user_id = $1", user_id)


async def rotate_encryption(db: Executor, cipher: EmailCipher) -> int:
    """Re-seal the secrets not under the current key (a few per user at most)."""
    rows = await db.fetch("SELECT id, user_id, secret_key_id, secret FROM webhooks"
                          " WHERE secret_key_id <> $1", cipher.current_key_id)
    for row in rows:
        key_id, sealed = cipher.seal_bytes(
            cipher.open_bytes(row["secret_key_id"], row["secret"], row["user_id"], SECRET),
            row["user_id"], SECRET)
        await db.execute("UPDATE webhooks SET secret_key_id = $2, secret = $3 WHERE id = $1",
                         row["id"], key_id, sealed)
    return len(rows)
