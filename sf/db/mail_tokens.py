"""Single-use tokens sent as links by mail (e-mail verification, password reset), stored only as
their SHA-256; and the pending address of an e-mail change, kept in its verification token.

Every read and write of a pending address goes through this module, so storing addresses
differently (encrypted at rest) changes this one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from sf.db.sql import Executor

VERIFY_EMAIL = "verify_email"
PASSWORD_RESET = "password_reset"

# The pending address of a user row `u` (a column expression for the users repository).
PENDING_EMAIL_SQL = """(SELECT t.new_email FROM mail_tokens t WHERE t.user_id = u.id
    AND t.purpose = 'verify_email' AND t.expires_at > now()) AS pending_email"""


@dataclass(frozen=True)
class RedeemedToken:
    """What a used token was for: its account and, for an e-mail change, the new address."""

    user_id: int
    new_email: str | None


async def issue(db: Executor, user_id: int | None, purpose: str, token_hash: bytes,
                ttl_seconds: int, new_email: str | None = None) -> None:
    """Store a token for the account, replacing its previous one of the same purpose (which so
    stops working). `user_id=None` runs the same statement and stores nothing (a reset asked
    for an unknown address must cost the same as one for a known address)."""
    await db.execute(
        """INSERT INTO mail_tokens (token_hash, user_id, purpose, new_email, expires_at)
           SELECT $1, $2, $3, $4, now() + make_interval(secs => $5) WHERE $2::bigint IS NOT NULL
           ON CONFLICT (user_id, purpose) DO UPDATE
           SET token_hash = EXCLUDED.token_hash, new_email = EXCLUDED.new_email,
               created_at = now(), expires_at = EXCLUDED.expires_at""",
        token_hash, user_id, purpose, new_email, float(ttl_seconds))


async def is_live(db: Executor, purpose: str, token_hash: bytes) -> bool:
    """Whether a token of this purpose exists and has not expired (it is not used up)."""
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mail_tokens WHERE token_hash = $1 AND purpose = $2"
        " AND expires_at > now())", token_hash, purpose))


async def redeem(db: Executor, purpose: str, token_hash: bytes) -> RedeemedToken | None:
    """Use a token up: delete it and return what it was for; None when it does not exist, has
    expired, was used or replaced (all alike)."""
    row = await db.fetchrow(
        "DELETE FROM mail_tokens WHERE token_hash = $1 AND purpose = $2 AND expires_at > now()"
        " RETURNING user_id, new_email", token_hash, purpose)
    return RedeemedToken(row["user_id"], row["new_email"]) if row else None


async def pending_email(db: Executor, user_id: int) -> str | None:
    """The address an unconfirmed e-mail change would move the account to, if any."""
    value = await db.fetchval(
        "SELECT new_email FROM mail_tokens WHERE user_id = $1 AND purpose = 'verify_email'"
        " AND expires_at > now()", user_id)
    return str(value) if value is not None else None


async def forget_expired(db: Executor) -> int:
    """Delete expired tokens (they already stopped working); how many went."""
    result = await db.execute("DELETE FROM mail_tokens WHERE expires_at <= now()")
    return int(result.split()[-1])
