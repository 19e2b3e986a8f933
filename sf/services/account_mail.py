"""The account use cases that go through mail: verifying an address (at registration and on
every change, which takes effect only once verified) and resetting a forgotten password.

Links carry a single-use token (32 random bytes, URL-safe); only its SHA-256 is stored, one per
account and purpose, so a new link voids the previous one. The token travels in the link's
fragment (`#token=`), which browsers never send to a server or put in a Referer.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable

import asyncpg

from sf.cache import Cache
from sf.config import Config
from sf.db import mail_tokens, outbox
from sf.db import users as users_db
from sf.db.mail_tokens import PASSWORD_RESET, VERIFY_EMAIL
from sf.db.sql import Executor
from sf.db.users import User
from sf.errors import Conflict, RateLimited, ValidationFailed
from sf.ratelimit import Limit, RateLimiter
from sf.security import EmailCipher, PasswordHasher
from sf.services.mail import MailContent, MailSender, compose, html_text
from sf.services.sessions import SessionStore

BAD_TOKEN = "is invalid, expired or already used"


def new_token() -> tuple[str, bytes]:
    """A token for a link and the digest stored for it."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bad_token() -> ValidationFailed:
    """The one answer for a token that does not exist, expired, was used or replaced."""
    return ValidationFailed("Invalid input", fields={"token": [BAD_TOKEN]})


def address_identity(email: str) -> str:
    """A submitted address, normalised, as a rate-limit identity (no address in Redis keys)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _paragraphs(*lines: str) -> str:
    return "".join(f"<p>{line}</p>" for line in lines)


def verification_content(user: User, address: str, link: str, hours: float) -> MailContent:
    """The mail asking to confirm `address` for the account."""
    text = (f"Hello {user.username},\n\nConfirm that {address} is your e-mail address on SF by "
            f"opening this link (it works once, for {hours:g} hours):\n\n{link}\n\nIf you did not "
            "ask for this, ignore this mail: nothing changes.\n")
    body = _paragraphs(
        f"Hello {html_text(user.username)},",
        f"Confirm that <b>{html_text(address)}</b> is your e-mail address on SF by opening "
        f"this link (it works once, for {hours:g} hours):",
        f'<a href="{html_text(link)}">{html_text(link)}</a>',
        "If you did not ask for this, ignore this mail: nothing changes.")
    return MailContent("Confirm your e-mail address", text, f"<html><body>{body}</body></html>")


def address_changed_content(user: User, new_address: str) -> MailContent:
    """The notice to the old address that the account moved to a new one."""
    text = (f"Hello {user.username},\n\nThe e-mail address of your SF account is now "
            f"{new_address}. If you did not do this, reset your password and contact support.\n")
    body = _paragraphs(
        f"Hello {html_text(user.username)},",
        f"The e-mail address of your SF account is now <b>{html_text(new_address)}</b>. "
        "If you did not do this, reset your password and contact support.")
    return MailContent("Your e-mail address was changed", text,
                       f"<html><body>{body}</body></html>")


def reset_content(address: str, link: str, minutes: float) -> MailContent:
    """The mail with a password reset link (it names no account: the address is enough)."""
    text = (f"Someone asked to reset the password of the SF account of {address}. To choose a "
            f"new password open this link (it works once, for {minutes:g} minutes):\n\n{link}\n\n"
            "If it was not you, ignore this mail: your password stays.\n")
    body = _paragraphs(
        f"Someone asked to reset the password of the SF account of <b>{html_text(address)}</b>. "
        f"To choose a new password open this link (it works once, for {minutes:g} minutes):",
        f'<a href="{html_text(link)}">{html_text(link)}</a>',
        "If it was not you, ignore this mail: your password stays.")
    return MailContent("Reset your password", text, f"<html><body>{body}</body></html>")


class AccountMailService:
    """E-mail verification and password reset: tokens, the mails queued in the outbox in the
    same transaction, and what a used token changes."""

    def __init__(self, db: asyncpg.Pool, config: Config, hasher: PasswordHasher,
                 sessions: SessionStore, cache: Cache, limiter: RateLimiter,
                 sender: MailSender, cipher: EmailCipher) -> None:
        self.db = db
        self.cipher = cipher
        self.config = config
        self.hasher = hasher
        self.sessions = sessions
        self.cache = cache
        self.limiter = limiter
        self.sender = sender

    def _link(self, page: str, token: str) -> str:
        return f"{self.config.public_base_url}/{page}#token={token}"

    def _compose(self, recipient: str, content: MailContent) -> bytes:
        return compose(self.config.mail_from, recipient, content)

    # --- verification ---------------------------------------------------------------------

    async def queue_verification(self, connection: Executor, user: User, address: str,
                                 change: bool) -> None:
        """Inside the caller's transaction: a new verification token for `address` (the
        account's pending new address when `change`, else its current one) and its mail."""
        token, digest = new_token()
        ttl = self.config.email_verification_ttl
        message = self._compose(address, verification_content(
            user, address, self._link("account/verify-email", token), ttl / 3600))
        await mail_tokens.issue(connection, self.cipher, user.id, VERIFY_EMAIL, digest, ttl,
                                new_email=address if change else None)
        await outbox.enqueue(connection, self.cipher, VERIFY_EMAIL, address, message)

    async def limit_address_change(self, user_id: int) -> None:
        """An account changes its address at most SF_RATE_LIMIT_MAIL times a
        SF_RATE_LIMIT_MAIL_WINDOW (each change mails a link: no mail cannon)."""
        gate = await self.limiter.hit([Limit("mail-change", f"u{user_id}",
                                             self.config.rate_limit_mail,
                                             self.config.rate_limit_mail_window)])
        if not gate.verdict.allowed:
            raise RateLimited(gate.verdict.retry_after, "Too many address changes, retry later")

    async def in_transaction(self, work: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        """Run `work` in one transaction, then let the sender know there is mail."""
        async with self.db.acquire() as connection, connection.transaction():
            await work(connection)
        self.sender.wake()

    async def resend_verification(self, user_id: int) -> None:
        """Mail the verification link again: to the pending address of a change, else to the
        account's address; Conflict when there is nothing left to verify."""
        user = await users_db.get_user(self.db, user_id, self.cipher)
        if user.pending_email is not None:
            address, change = user.pending_email, True
        elif not user.email_verified:
            address, change = user.email, False
        else:
            raise Conflict("The e-mail address is already verified")

        async def queue(connection: asyncpg.Connection) -> None:
            await self.queue_verification(connection, user, address, change)

        await self.in_transaction(queue)

    async def verify_email(self, token: str) -> None:
        """Use a verification token: the address it names becomes the account's verified
        address (a pending change takes effect now, its uniqueness checked again: 409 when
        another account took it meanwhile, and the old address is told)."""
        digest = token_digest(token)
        async with self.db.acquire() as connection, connection.transaction():
            redeemed = await mail_tokens.redeem(connection, self.cipher, VERIFY_EMAIL, digest)
            if redeemed is None:
                raise bad_token()
            user = await users_db.get_user(connection, redeemed.user_id, self.cipher)
            await users_db.confirm_email(connection, self.cipher, user.id, redeemed.new_email)
            if redeemed.new_email is not None and redeemed.new_email != user.email:
                # A reset link mailed to the old address must not outlive it
                # (security.md#reset-link-after-change).
                await mail_tokens.void(connection, user.id, PASSWORD_RESET)
                notice = self._compose(user.email,
                                       address_changed_content(user, redeemed.new_email))
                await outbox.enqueue(connection, self.cipher, "email_changed", user.email, notice)
        self.sender.wake()
        await self.cache.forget_public_views(user.username)

    # --- password reset -------------------------------------------------------------------

    async def password_changed(self, user_id: int) -> None:
        """The password was changed some other way: a reset link already mailed stops working
        (security.md#reset-link-after-change)."""
        await mail_tokens.void(self.db, user_id, PASSWORD_RESET)

    async def request_password_reset(self, email: str) -> None:
        """Mail a reset link to the account whose address is `email`, if there is one.

        The same work whether or not there is (security.md#reset-enumeration-by-timing): the
        same lookup, the same rate-limit round trip, the mail composed, and the same two
        statements in one transaction, which store and queue nothing for an unknown address.
        Limited per submitted address and per account (429 beyond, alike for both).
        """
        user = await users_db.find_user_by_email(self.db, self.cipher, email)
        address = address_identity(email)
        window, limit = self.config.rate_limit_mail_window, self.config.rate_limit_mail
        gate = await self.limiter.hit([
            Limit("reset-address", address, limit, window),
            Limit("reset-account", f"u{user.id}" if user else f"a{address}", limit, window)])
        if not gate.verdict.allowed:
            raise RateLimited(gate.verdict.retry_after, "Too many reset requests, retry later")
        token, digest = new_token()
        ttl = self.config.password_reset_ttl
        recipient = user.email if user else email
        message = self._compose(recipient, reset_content(
            recipient, self._link("account/reset-password", token), ttl / 60))

        async def queue(connection: asyncpg.Connection) -> None:
            await mail_tokens.issue(connection, self.cipher, user.id if user else None, PASSWORD_RESET,
                                    digest, ttl)
            await outbox.enqueue(connection, self.cipher, PASSWORD_RESET, recipient, message,
                                 send=user is not None)

        await self.in_transaction(queue)

    async def reset_password(self, token: str, new_password: str) -> None:
        """Use a reset token: the new password is set, the address counts as verified (the
        link reached it), and every session of the account ends."""
        digest = token_digest(token)
        if not await mail_tokens.is_live(self.db, PASSWORD_RESET, digest):
            raise bad_token()  # before hashing: a made-up token costs no bcrypt
        password_hash = await self.hasher.hash_password(new_password)  # bounded: 503 past it
        async with self.db.acquire() as connection, connection.transaction():
            redeemed = await mail_tokens.redeem(connection, self.cipher, PASSWORD_RESET, digest)
            if redeemed is None:
                raise bad_token()
            await users_db.set_password_hash(connection, redeemed.user_id, password_hash)
            await users_db.confirm_email(connection, self.cipher, redeemed.user_id, None)
        await self.sessions.revoke_all(redeemed.user_id)
        await self.cache.forget_public_views()  # the cached profile's updated_at
