"""The mail outbox: mails INSERTed inside a request's transaction, claimed by any node's sender
(`FOR UPDATE SKIP LOCKED` under a lease), then marked sent, retried later or given up."""

from __future__ import annotations

from dataclasses import dataclass

from sf.db.sql import Executor


@dataclass(frozen=True)
class OutboxMail:
    """One claimed mail: who it goes to, the RFC 5322 message, and which attempt this is."""

    id: int
    kind: str
    recipient: str
    message: bytes
    attempts: int


async def enqueue(db: Executor, kind: str, recipient: str, message: bytes,
                  send: bool = True) -> None:
    """Queue a mail (in the caller's transaction). `send=False` writes a 'skipped' row of the
    same kind without address or message instead: a caller that must take the same time
    either way (a password reset asked for an unknown address) runs the same statement, and
    its transaction writes, and so waits for its commit to be flushed, like the other."""
    await db.execute(
        """INSERT INTO mail_outbox (kind, recipient, message, status)
           VALUES ($1, CASE WHEN $4 THEN $2 ELSE '' END, CASE WHEN $4 THEN $3::bytea ELSE ''::bytea END,
                   CASE WHEN $4 THEN 'pending' ELSE 'skipped' END)""",
        kind, recipient, message, send)


async def claim(db: Executor, batch: int, lease_seconds: float) -> list[OutboxMail]:
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
           RETURNING m.id, m.kind, m.recipient, m.message, m.attempts""",
        batch, lease_seconds)
    return [OutboxMail(row["id"], row["kind"], row["recipient"], bytes(row["message"]),
                       row["attempts"]) for row in rows]


async def mark_sent(db: Executor, mail: OutboxMail) -> bool:
    """Record a delivered mail (its address and message blanked: the message holds a one-time
    link). False when this claim was no longer ours (its lease lapsed and another took it)."""
    result = await db.execute(
        """UPDATE mail_outbox SET status = 'sent', sent_at = now(), claimed_until = NULL,
               recipient = '', message = '', last_error = NULL
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
               recipient = '', message = ''
           WHERE id = $1 AND status = 'sending' AND attempts = $2""",
        mail.id, mail.attempts, error[:500])


async def forget_done(db: Executor, older_than_seconds: float) -> int:
    """Delete rows sent, given up or skipped longer ago than this; how many went."""
    result = await db.execute(
        "DELETE FROM mail_outbox WHERE status IN ('sent', 'failed', 'skipped')"
        " AND created_at < now() - make_interval(secs => $1)", older_than_seconds)
    return int(result.split()[-1])
