"""The mail outbox: mails INSERTed inside a request's transaction, claimed by any node's sender
(`FOR UPDATE SKIP LOCKED` under a lease), then marked sent, retried later or given up.

A queued mail's recipient and message (which names the address too) are stored sealed with the
e-mail cipher (`EmailCipher`, like every stored address) and blanked once the mail is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from sf.db.sql import Executor
from sf.security import EmailCipher

RECIPIENT = "outbox_recipient"
MESSAGE = "outbox_message"


@dataclass(frozen=True)
class OutboxMail:
    """One claimed mail: who it goes to, the RFC 5322 message, and which attempt this is."""

    id: int
    kind: str
    recipient: str
    message: bytes
    attempts: int


async def enqueue(db: Executor, cipher: EmailCipher, kind: str, recipient: str, message: bytes,
                  send: bool = True) -> None:
    """Queue a mail (in the caller's transaction). `send=False` writes a 'skipped' row of the
    same kind without address or message instead: a caller that must take the same time
    either way (a password reset asked for an unknown address) runs the same statement, and
    its transaction writes, and so waits for its commit to be flushed, like the other."""
    key_id, sealed_recipient = cipher.seal_bytes(recipient.encode(), 0, RECIPIENT)
    _, sealed_message = cipher.seal_bytes(message, 0, MESSAGE)
    await db.execute(
        """INSERT INTO mail_outbox (kind, key_id, recipient, message, status)
           VALUES ($1, $5, CASE WHEN $4 THEN $2::bytea ELSE ''::bytea END,
                   CASE WHEN $4 THEN $3::bytea ELSE ''::bytea END,
                   CASE WHEN $4 THEN 'pending' ELSE 'skipped' END)""",
        kind, sealed_recipient, sealed_message, send, key_id)


async def claim(db: Executor, cipher: EmailCipher, batch: int,
                lease_seconds: float) -> list[OutboxMail]:
    """Up to `batch` due mails, marked 'sending' until the lease ends: pending ones whose time
    has come, and 'sending' ones whose lease lapsed (their sender died). Rows another sender
    holds locked are skipped, so no two senders take the same mail."""
    rows = await db.fetch(
        """WITH due AS (
               SELECT id FROM mail_outbox
               WHERE (status = 'pending' AND next_attempt_at <= now())
                  OR (status = 'sending' AND claimed_until < now())
               ORDER BY id
               LIMIT $1
               FOR UPDATE SKIP LOCKED)
           UPDATE mail_outbox m
           SET status = 'sending', attempts = m.attempts + 1,
               claimed_until = now() + make_interval(secs => $2)
           FROM due WHERE m.id = due.id
           RETURNING m.id, m.kind, m.key_id, m.recipient, m.message, m.attempts""",
        batch, lease_seconds)
    return [OutboxMail(row["id"], row["kind"],
                       cipher.open_bytes(row["key_id"], row["recipient"], 0, RECIPIENT).decode(),
                       cipher.open_bytes(row["key_id"], row["message"], 0, MESSAGE),
                       row["attempts"]) for row in rows]


async def mark_sent(db: Executor, mail: OutboxMail) -> bool:
    """Record a delivered mail (its address and message blanked: the message holds a one-time
    link). False when this claim was no longer ours (its lease lapsed and another took it)."""
    result = await db.execute(
        """UPDATE mail_outbox SET status = 'sent', sent_at = now(), claimed_until = NULL,
               recipient = ''::bytea, message = ''::bytea, last_error = NULL
           WHERE id = $1 AND status = 'sending' AND attempts = $2""",
        mail.id, mail.attempts)
    return not result.endswith(" 0")


async def retry_later(db: Executor, mail: OutboxMail, delay_seconds: float, error: str) -> None:
    """Back to pending after a failed attempt, due again in `delay_seconds`."""
    await db.execute(
        """UPDATE mail_outbox SET status = 'pending', claimed_until = NULL, last_error = $3,
               next_attempt_at = now() + make_interval(secs => $4)
           WHERE id = $1 AND status = 'sending' AND attempts = $2""",
        mail.id, mail.attempts, error[:500], delay_seconds)


async def give_up(db: Executor, mail: OutboxMail, error: str) -> None:
    """The last attempt failed: 'failed', its address and message blanked."""
    await db.execute(
        """UPDATE mail_outbox SET status = 'failed', claimed_until = NULL, last_error = $3,
               recipient = ''::bytea, message = ''::bytea
           WHERE id = $1 AND status = 'sending' AND attempts = $2""",
        mail.id, mail.attempts, error[:500])


async def forget_done(db: Executor, older_than_seconds: float) -> int:
    """Delete rows sent, given up or skipped longer ago than this; how many went."""
    result = await db.execute(
        "DELETE FROM mail_outbox WHERE status IN ('sent', 'failed', 'skipped')"
        " AND created_at < now() - make_interval(secs => $1)", older_than_seconds)
    return int(result.split()[-1])


async def rotate_encryption(db: Executor, cipher: EmailCipher) -> int:
    """Re-seal queued mails not under the current key (mails still to go: few rows)."""
    rows = await db.fetch(
        "SELECT id, key_id, recipient, message FROM mail_outbox"
        " WHERE status IN ('pending', 'sending') AND key_id <> $1", cipher.current_key_id)
    for row in rows:
        key_id, recipient = cipher.seal_bytes(
            cipher.open_bytes(row["key_id"], row["recipient"], 0, RECIPIENT), 0, RECIPIENT)
        _, message = cipher.seal_bytes(
            cipher.open_bytes(row["key_id"], row["message"], 0, MESSAGE), 0, MESSAGE)
        await db.execute("UPDATE mail_outbox SET key_id = $2, recipient = $3, message = $4"
                         " WHERE id = $1", row["id"], key_id, recipient, message)
    return len(rows)
