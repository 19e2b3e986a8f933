"""Push subscriptions repository: the browsers (Web Push endpoints and keys) each account
receives pushes on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.sql import Executor
from sf.errors import NotFound

# The newest subscriptions an account keeps (a browser, a phone, a few stale ones); one more
# pushes the oldest out rather than failing, because a browser cannot tell its old
# subscriptions from the ones of other devices.
PUSH_SUBSCRIPTIONS_PER_USER = 10


@dataclass(frozen=True)
class PushSubscription:
    """A browser's subscription: where to send and the keys its pushes are encrypted to."""

    id: int
    user_id: int
    endpoint: str
    p256dh: str
    auth: str
    expires_at: datetime | None
    created_at: datetime
    last_success_at: datetime | None


_COLUMNS = "id, user_id, endpoint, p256dh, auth, expires_at, created_at, last_success_at"


def _subscription(row: asyncpg.Record) -> PushSubscription:
    return PushSubscription(int(row["id"]), int(row["user_id"]), row["endpoint"], row["p256dh"],
                            row["auth"], row["expires_at"], row["created_at"],
                            row["last_success_at"])


async def subscribe(db: asyncpg.Pool, user_id: int, endpoint: str, p256dh: str, auth: str,
                    expires_at: datetime | None) -> tuple[int, bool]:
    """Store a subscription: (its id, whether it is new). The same endpoint again keeps its id
    and takes the keys given; an endpoint another account had moves here (one browser, one
    account: its pushes must not reach whoever signs in next); past the cap the oldest go."""
    async with db.acquire() as connection, connection.transaction():
        # One subscriber at a time per account, so the cap holds under concurrent requests.
        exists = await connection.fetchval(
            "SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", user_id)
        if exists is None:
            raise NotFound("User not found")
        await connection.execute(
            "DELETE FROM push_subscriptions WHERE endpoint = $1 AND user_id <> $2",
            endpoint, user_id)
        row = await connection.fetchrow(
            """INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, expires_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (user_id, endpoint) DO UPDATE
                  SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                      expires_at = EXCLUDED.expires_at
               RETURNING id, (xmax = 0) AS inserted""",
            user_id, endpoint, p256dh, auth, expires_at)
        await connection.execute(
            """DELETE FROM push_subscriptions WHERE user_id = $1 AND id NOT IN (
                   SELECT id FROM push_subscriptions WHERE user_id = $1
                    ORDER BY id DESC LIMIT $2)""", user_id, PUSH_SUBSCRIPTIONS_PER_USER)
    return int(row["id"]), bool(row["inserted"])


async def subscriptions_of(db: Executor, user_id: int) -> list[PushSubscription]:
    """One account's subscriptions, newest first."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM push_subscriptions WHERE user_id = $1 ORDER BY id DESC",
        user_id)
    return [_subscription(row) for row in rows]


async def unsubscribe(db: Executor, user_id: int, subscription_id: int) -> None:
    """Delete one of the account's subscriptions; NotFound for any other id (another
    account's looks exactly like one that never existed)."""
    deleted = await db.fetchval(
        "DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2 RETURNING id",
        subscription_id, user_id)
    if deleted is None:
        raise NotFound("Push subscription not found")


async def subscriptions_of_users(db: Executor, user_ids: Sequence[int]) -> list[PushSubscription]:
    """The live subscriptions of these accounts, in one query (a fan-out batch), oldest
    first."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM push_subscriptions
             WHERE user_id = ANY($1::bigint[]) AND (expires_at IS NULL OR expires_at > now())
             ORDER BY id""", list(user_ids))
    return [_subscription(row) for row in rows]


async def delete_subscriptions(db: Executor, subscription_ids: Sequence[int]) -> int:
    """Delete subscriptions the push service says are gone (404/410); how many went."""
    if not subscription_ids:
        return 0
    result = await db.execute("DELETE FROM push_subscriptions WHERE id = ANY($1::bigint[])",
                              list(subscription_ids))
    return int(result.split()[-1])


async def mark_delivered(db: Executor, subscription_ids: Sequence[int]) -> None:
    """Record that the push service took a push for each of these subscriptions just now."""
    if subscription_ids:
        await db.execute(
            "UPDATE push_subscriptions SET last_success_at = now() WHERE id = ANY($1::bigint[])",
            list(subscription_ids))


async def hide_account(connection: asyncpg.Connection, user_id: int) -> None:
    """A deleted account gets no more pushes: its subscriptions go at the request."""
    await connection.execute("DELETE FROM push_subscriptions WHERE user_id = $1", user_id)
