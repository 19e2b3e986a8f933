"""Mail: messages composed safely (multipart text + HTML, no user text in a header but the
validated recipient) and the sender that delivers the outbox through SMTP.

Requests never talk to the SMTP server: they INSERT into the outbox inside their transaction
(`sf.db.outbox`), so an SMTP outage or a crash loses no mail and delays no request. Every API
process runs a `MailSender`: it claims due mails with `FOR UPDATE SKIP LOCKED` under a lease
(two senders never take the same row; a row left 'sending' by a dead sender is claimed again
once its lease lapses), sends them, marks them sent, and retries failures with exponential
backoff up to `SF_MAIL_MAX_ATTEMPTS` (then gives up, logged as an error). Delivery is at least
once: a sender that dies after the server took a mail but before marking it sent sends it again.
"""

from __future__ import annotations

import contextlib
import email.policy
import html
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import unquote, urlsplit

import aiosmtplib
import asyncpg

from sf.config import Config
from sf.db import mail_tokens, outbox
from sf.db.outbox import OutboxMail
from sf.errors import validation_error
from sf.observability import Outage
from sf.security import EmailCipher
from sf.services.workers import QueueWorker

log = logging.getLogger("sf.mail")

BATCH = 10  # mails claimed at once by one sender
HOUSEKEEPING_SECONDS = 3600.0  # how often a sender deletes expired tokens and old outbox rows
KEEP_DONE_SECONDS = 7 * 86400.0  # outbox rows sent, given up or skipped are kept this long
BACKOFF_MAX_SECONDS = 3600.0
HEADER_BREAKERS = frozenset("\r\n\x00")
MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


def check_recipient(address: str) -> str:
    """The recipient, refused (422 on `email`) when it could end its header and start another:
    the one value a user supplies that goes into a header (security.md#mail-header-injection)."""
    if not address or any(char in HEADER_BREAKERS for char in address) \
            or not address.isascii() or "=?" in address \
            or parseaddr(address)[1] != address or "@" not in address:
        raise validation_error("email", "is not an address mail can be sent to")
    return address


@dataclass(frozen=True)
class MailContent:
    """What a mail says: a fixed subject, and the same text as plain text and as HTML (every
    value in the HTML escaped by whoever built it, see `html_text`)."""

    subject: str
    text: str
    html: str
    # More headers (List-Unsubscribe): values SF builds, never a user's text.
    headers: tuple[tuple[str, str], ...] = ()


def html_text(value: str) -> str:
    """A value as HTML text or attribute content (quotes escaped too)."""
    return html.escape(value, quote=True)


def compose(sender: str, recipient: str, content: MailContent) -> bytes:
    """The RFC 5322 message (multipart/alternative: text, then HTML) as bytes for the outbox."""
    # Lines up to RFC 5322's 998: a long List-Unsubscribe URL stays one plain header line
    # (folded, the default policy writes it as RFC 2047 encoded-words, which RFC 2369 and
    # mail clients' one-click unsubscribe do not read).
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = sender
    try:
        message["To"] = check_recipient(recipient)
    except (ValueError, IndexError):  # the header parser refusing what the check let by
        raise validation_error("email", "is not an address mail can be sent to") from None
    message["Subject"] = content.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    for name, value in content.headers:
        if any(char in HEADER_BREAKERS for char in value):
            raise ValueError(f"the {name} header would break the mail")
        message[name] = value
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message.as_bytes()


def backoff_seconds(first: float, attempts: int) -> float:
    """The wait before the next attempt after `attempts` failed ones: doubling, capped."""
    return float(min(BACKOFF_MAX_SECONDS, first * 2 ** max(0, attempts - 1)))


class MailSender(QueueWorker):
    """Delivers the outbox through the SMTP server of `SF_SMTP_URL`, one per API process."""

    def __init__(self, db: asyncpg.Pool, config: Config, cipher: EmailCipher) -> None:
        self.db = db
        self.config = config
        self.cipher = cipher  # queued mails are sealed (sf/db/outbox.py)
        self.envelope_from = parseaddr(config.mail_from)[1]
        # Long enough for a whole batch at the slowest the server may be (each step timed out).
        self.lease_seconds = config.smtp_timeout * (BATCH + 3)
        super().__init__("mail sender", log, Outage(
            log, "the mail outbox", "mails wait in the outbox until it is back"),
            config.mail_poll_seconds)
        self._next_housekeeping = 0.0

    async def work(self) -> None:
        await self.send_due()
        await self._housekeeping()

    async def send_due(self) -> int:
        """Claim and send due mails until none is left; how many were delivered."""
        delivered = 0
        while True:
            mails = await outbox.claim(self.db, self.cipher, BATCH, self.lease_seconds)
            if not mails:
                return delivered
            delivered += await self._send_batch(mails)

    async def _housekeeping(self) -> None:
        """Now and then: expired link tokens and old finished outbox rows go."""
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        tokens = await mail_tokens.forget_expired(self.db)
        rows = await outbox.forget_done(self.db, KEEP_DONE_SECONDS)
        if tokens or rows:
            log.info("mail housekeeping", extra={"expired_tokens": tokens, "outbox_rows": rows})

    def _client(self) -> aiosmtplib.SMTP:
        url = urlsplit(self.config.smtp_url)
        secure = url.scheme == "smtps"
        return aiosmtplib.SMTP(
            hostname=url.hostname, port=url.port or (465 if secure else 25),
            username=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            use_tls=secure, timeout=self.config.smtp_timeout)

    async def _send_batch(self, mails: list[OutboxMail]) -> int:
        """Send claimed mails over one SMTP connection; each failure is retried later."""
        smtp = self._client()
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            for mail in mails:
                await self._failed(mail, error)
            return 0
        delivered = 0
        try:
            for mail in mails:
                started = time.monotonic()
                try:
                    await smtp.sendmail(self.envelope_from, [mail.recipient], mail.message)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    await self._failed(mail, error)
                    continue
                except (UnicodeError, ValueError) as error:
                    # A mail no retry can send (an address the wire cannot carry): given up now,
                    # never re-claimed lease after lease (security.md#poisoned-mail).
                    await self._failed(mail, error, permanent=True)
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                        await smtp.rset()  # the half-begun transaction, before the next mail
                    continue
                if await outbox.mark_sent(self.db, mail):
                    delivered += 1
                log.info("mail sent", extra={"mail_id": mail.id, "kind": mail.kind,
                                             "attempt": mail.attempts,
                                             "seconds": round(time.monotonic() - started, 3)})
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
        return delivered

    async def _failed(self, mail: OutboxMail, error: BaseException,
                      permanent: bool = False) -> None:
        reason = f"{type(error).__name__}: {error}"
        if permanent or mail.attempts >= self.config.mail_max_attempts:
            await outbox.give_up(self.db, mail, reason)
            log.error("mail given up", extra={"mail_id": mail.id, "kind": mail.kind,
                                              "attempts": mail.attempts, "reason": reason})
            return
        delay = backoff_seconds(self.config.mail_retry_seconds, mail.attempts)
        await outbox.retry_later(self.db, mail, delay, reason)
        log.warning("mail not sent, retrying", extra={
            "mail_id": mail.id, "kind": mail.kind, "attempt": mail.attempts,
            "retry_in": delay, "reason": reason})
