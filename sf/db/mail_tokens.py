"""Single-use tokens sent as links by mail (e-mail verification, password reset), stored only as
their SHA-256; and the pending address of an e-mail change, kept in its verification token.

A pending address is stored sealed like the account's own (`EmailCipher`, purpose
`PENDING_EMAIL_PURPOSE`, bound to the account), never in clear.
"""

from __future__ import annotations

from dataclasses import dataclass

from sf.db.sql import Executor
from sf.security import EmailCipher

VERIFY_EMAIL = "verify_email"
PASSWORD_RESET = "password_reset"

# The pending address of a user row `u` (a column expression for the users repository).
PENDING_EMAIL_PURPOSE = "pending_email"
# The sealed pending address of a user row `u` (two columns for the users repository).
_PENDING = """(SELECT t.{column} FROM mail_tokens t WHERE t.user_id = u.id
    AND t.purpose = 'verify_email' AND t.expires_at > now())"""
PENDING_EMAIL_SQL = (_PENDING.format(column="new_email_key_id") + " AS pending_email_key_id, "
                     + _PENDING.format(column="new_email_ciphertext")
                     + " AS pending_email_ciphertext")


@dataclass(frozen=True)
class RedeemedToken:
    """What a used token was for: its account and, for an e-mail change, the new address."""

    user_id: int
    new_email: str | None


async def issue(db: Executor, cipher: EmailCipher, user_id: int | None, purpose: str,
                token_hash: bytes, ttl_seconds: int, new_email: str | None = None) -> None:
    """Store a token for the account, replacing its previous one of the same purpose (which so
    stops working). `user_id=None` runs the same statement and stores nothing (a reset asked
    for an unknown address must cost the same as one for a known address)."""
    key_id = ciphertext = None
    if new_email is not None and user_id is not None:
        sealed = cipher.encrypt(new_email, user_id, PENDING_EMAIL_PURPOSE)
        key_id, ciphertext = sealed.key_id, sealed.ciphertext
    await db.execute(
        """INSERT INTO mail_tokens (token_hash, user_id, purpose, new_email_key_id,
                                    new_email_ciphertext, expires_at)
           SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6)
           WHERE $2::bigint IS NOT NULL
           ON CONFLICT (user_id, purpose) DO UPDATE
           SET token_hash = EXCLUDED.token_hash, new_email_key_id = EXCLUDED.new_email_key_id,
               new_email_ciphertext = EXCLUDED.new_email_ciphertext,
               created_at = now(), expires_at = EXCLUDED.expires_at""",
        token_hash, user_id, purpose, key_id, ciphertext, float(ttl_seconds))


async def is_live(db: Executor, purpose: str, token_hash: bytes) -> bool:
    """Whether a token of this purpose exists and has not expired (it is not used up)."""
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mail_tokens WHERE token_hash = $1 AND purpose = $2"
        " AND expires_at > now())", token_hash, purpose))


async def redeem(db: Executor, cipher: EmailCipher, purpose: str,
                 token_hash: bytes) -> RedeemedToken | None:
    """Use a token up: delete it and return what it was for; None when it does not exist, has
    expired, was used or replaced (all alike)."""
    row = await db.fetchrow(
        "DELETE FROM mail_tokens WHERE token_hash = $1 AND purpose = $2 AND expires_at > now()"
        " RETURNING user_id, new_email_key_id, new_email_ciphertext", token_hash, purpose)
    if row is None:
        return None
    new_email = None
    if row["new_email_ciphertext"] is not None:
        new_email = cipher.decrypt(row["new_email_key_id"], row["new_email_ciphertext"],
                                   row["user_id"], PENDING_EMAIL_PURPOSE)
    return RedeemedToken(row["user_id"], new_email)


async def pending_email(db: Executor, cipher: EmailCipher, user_id: int) -> str | None:
    """The address an unconfirmed e-mail change would move the account to, if any."""
    row = await db.fetchrow(
        "SELECT new_email_key_id, new_email_ciphertext FROM mail_tokens WHERE user_id = $1"
        " AND purpose = 'verify_email' AND expires_at > now()", user_id)
    if row is None or row["new_email_ciphertext"] is None:
        return None
    return cipher.decrypt(row["new_email_key_id"], row["new_email_ciphertext"], user_id,
                          PENDING_EMAIL_PURPOSE)


async def void(db: Executor, user_id: int, purpose: str) -> None:
    """The account's live token of this purpose stops working (a reset link once the password or
    the address it was mailed to changed)."""
    await db.execute("DELETE FROM mail_tokens WHERE user_id = $1 AND purpose = $2",
                     user_id, purpose)


async def forget_expired(db: Executor) -> int:
    """Delete expired tokens (they already stopped working); how many went."""
    result = await db.execute("DELETE FROM mail_tokens WHERE expires_at <= now()")
    return int(result.split()[-1])


async def rotate_encryption(db: Executor, cipher: EmailCipher) -> int:
    """Re-seal pending addresses not under the current key (few rows: one statement each)."""
    rows = await db.fetch(
        "SELECT token_hash, user_id, new_email_key_id, new_email_ciphertext FROM mail_tokens"
        " WHERE new_email_key_id <> $1", cipher.current_key_id)
    for row in rows:
        plain = cipher.decrypt(row["new_email_key_id"], row["new_email_ciphertext"],
                               row["user_id"], PENDING_EMAIL_PURPOSE)
        sealed = cipher.encrypt(plain, row["user_id"], PENDING_EMAIL_PURPOSE)
        await db.execute("UPDATE mail_tokens SET new_email_key_id = $2, new_email_ciphertext = $3"
                         " WHERE token_hash = $1", row["token_hash"], sealed.key_id,
                         sealed.ciphertext)
    return len(rows)
