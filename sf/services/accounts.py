"""Account use-cases: register, log in, refresh, log out, profiles, avatars, passwords."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from sf.cache import INVALIDATED_TTL, STREAMS_NAMESPACE, Cache, Prefetched, public_user_key
from sf.db import login_records, mail_tokens, outbox
from sf.db import users as users_db
from sf.db import webhooks as webhooks_db
from sf.db.users import User
from sf.errors import Forbidden, Unauthorized, ValidationFailed, validation_error
from sf.media.images import AVATAR_URL_PREFIX, ImageWorker
from sf.ratelimit import LoginThrottle
from sf.schemas.dump import encode_json
from sf.security import EmailCipher, PasswordHasher, TokenClaims
from sf.services.account_mail import AccountMailService
from sf.services.consents import ConsentService
from sf.services.erasure import ErasureService
from sf.services.sessions import IssuedTokens, SessionStore
from sf.services.stream_keys import StreamKeyService


def check_avatar_url(url: str, user_id: int, media_dir: Path, avatar_hosts: tuple[str, ...]) -> None:
    """422 unless `url` may be a profile's avatar: the URL path of an avatar file this user
    uploaded that still exists, or an https URL on an allow-listed host (`avatar_hosts`).

    Anything else (tracking pixels, internal addresses like http://169.254.169.254/) would make
    every viewer's browser, or a server that prefetches avatars, fetch it.
    """
    if url.startswith(AVATAR_URL_PREFIX):
        name = url[len(AVATAR_URL_PREFIX):]
        if not re.fullmatch(rf"{user_id}-[A-Za-z0-9_-]{{1,64}}\.webp", name) \
                or not (media_dir / "avatars" / name).is_file():
            raise validation_error("avatar", "is not an avatar you uploaded")
        return
    allowed = "must be null, an avatar you uploaded, or an https URL on an allowed host"
    if any(char.isspace() or char == "\\" for char in url):
        raise validation_error("avatar", allowed)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise validation_error("avatar", allowed) from None
    if parts.scheme != "https" or parts.username is not None or parts.password is not None \
            or port not in (None, 443) or (parts.hostname or "") not in avatar_hosts:
        raise validation_error("avatar", allowed)


@dataclass(frozen=True)
class LoginResult:
    """The user and the token pair of a new or refreshed session."""

    user: User
    tokens: IssuedTokens


class AccountService:
    """Ties the users repository, password hashing and the session store together."""

    def __init__(self, db: asyncpg.Pool, hasher: PasswordHasher, sessions: SessionStore,
                 throttle: LoginThrottle, cache: Cache, images: ImageWorker,
                 stream_keys: StreamKeyService, email_cipher: EmailCipher,
                 consents: ConsentService, account_mail: AccountMailService,
                 erasure: ErasureService, avatar_hosts: tuple[str, ...] = ()) -> None:
        self.db = db
        self.email_cipher = email_cipher
        self.consents = consents
        self.account_mail = account_mail
        self.erasure = erasure
        self.avatar_hosts = avatar_hosts
        self.hasher = hasher
        self.sessions = sessions
        self.throttle = throttle
        self.cache = cache
        self.images = images
        self.stream_keys = stream_keys

    async def _hash(self, password: str) -> str:
        """Every password hash and check goes through the hasher's bounded queue (503 past it)."""
        return await self.hasher.hash_password(password)

    async def _verify(self, password: str, password_hash: str | None) -> bool:
        return (await self.hasher.check_password(password, password_hash)).ok

    async def start_session(self, user: User, kind: str, client_ip: str,
                            user_agent: str) -> LoginResult:
        """Open a session for `user`, who just signed in (`kind`: register, login,
        password_reset), and keep its login record (shown in the user's export; the address is
        erased after SF_IP_RETENTION_DAYS)."""
        tokens = await self.sessions.create(user.id)
        await login_records.record(self.db, user.id, tokens.session_id, kind, client_ip,
                                   user_agent)
        return LoginResult(user, tokens)

    async def register(self, username: str, email: str, password: str,
                       accepted_privacy_policy: str, client_ip: str = "",
                       user_agent: str = "") -> LoginResult:
        """Create an account that accepted the current privacy policy (422 on
        `accept_privacy_policy` for another version; the acceptance is kept with it), its
        address still unverified (a link to verify it is mailed), and sign it in."""
        self.consents.check_current(accepted_privacy_policy, "accept_privacy_policy")
        password_hash = await self._hash(password)
        created: list[User] = []

        async def create(connection: asyncpg.Connection) -> None:
            user = await users_db.create_user(connection, self.email_cipher, username, email,
                                              password_hash)
            await self.consents.record_acceptance(connection, user.id, accepted_privacy_policy,
                                                  "accept_privacy_policy")
            await self.stream_keys.create_for_new_user(connection, user)
            await self.account_mail.queue_verification(connection, user, user.email, change=False)
            created.append(user)

        await self.account_mail.in_transaction(create)
        user = replace(created[0], privacy_policy_accepted=accepted_privacy_policy)
        return await self.start_session(user, "register", client_ip, user_agent)

    async def login(self, login: str, password: str, client_ip: str,
                    user_agent: str = "", restore: bool = False) -> LoginResult:
        """Same answer and about the same time for an unknown user and a wrong password.

        Failures are throttled per account (see `LoginThrottle`), whichever of username or
        email names it. An account deleted within its grace period signs in only with
        `restore`, which cancels the erasure; without it, 403 says the erasure is scheduled
        (only to someone who gave the right password).
        """
        self.hasher.refuse_if_full()  # before any work for a check that could not run
        user = await users_db.find_user_for_login(self.db, self.email_cipher, login)
        account = (f"u{user.id}" if user else
                   "n" + hashlib.sha256(login.lower().encode()).hexdigest()[:32])
        delay = await self.throttle.check(account, client_ip)
        if delay:
            await asyncio.sleep(delay)
        check = await self.hasher.check_password(password, user.password_hash if user else None)
        if not check.ok or user is None:
            await self.throttle.failed(account, client_ip)
            raise Unauthorized("Invalid credentials")
        await self.throttle.succeeded(account, client_ip)
        if check.rehashed is not None:  # the work factor changed since this hash was made
            await users_db.replace_password_hash(self.db, user.id, user.password_hash,
                                                 check.rehashed)
        if user.deleted_at is not None:
            if not restore:
                raise Forbidden("This account is deleted and scheduled for erasure; sign in "
                                'with "restore": true to keep it')
            await self.erasure.restore(user)
            user = await users_db.get_user(self.db, user.id, self.email_cipher)
        return await self.start_session(user, "login", client_ip, user_agent)

    async def refresh(self, refresh_token: str) -> LoginResult:
        tokens = await self.sessions.rotate(refresh_token)
        try:
            user = await users_db.get_user(self.db, tokens.user_id, self.email_cipher)
        except Exception:
            raise Unauthorized("Session expired or revoked") from None
        return LoginResult(user, tokens)

    async def logout(self, claims: TokenClaims) -> None:
        await self.sessions.revoke(claims)

    async def update_profile(self, user_id: int, changes: dict[str, Any],
                             current_password: str | None = None,
                             client_ip: str = "") -> User:
        """Apply profile `changes` (email, bio, avatar; others stay).

        Changing the email needs the current password: missing or wrong is a 422 on
        `current_password`. A password that is given is checked whatever else changes. A new
        email is not the account's address yet: it is kept pending and a verification link
        mailed to it (409 when another account has it); the old one stays until then.
        """
        if changes.get("avatar") is not None:
            check_avatar_url(changes["avatar"], user_id, self.images.media_dir, self.avatar_hosts)
        user = await users_db.get_user(self.db, user_id, self.email_cipher)
        if current_password is None:
            if "email" in changes and changes["email"] != user.email:
                raise ValidationFailed("Invalid input", fields={
                    "current_password": ["required to change the email"]})
        elif not await self._check_password(user, current_password, client_ip):
            raise ValidationFailed("Invalid input",
                                   fields={"current_password": ["is not correct"]})
        new_email = changes.pop("email", None)
        if new_email is not None and new_email == user.email:
            new_email = None
        if new_email is not None:
            # Whether another account has the address is told only to whoever can open the
            # link mailed to it (confirming then answers 409), never here: this answer would
            # be an oracle of registered addresses (security.md#address-change-oracle).
            await self.account_mail.limit_address_change(user_id)

            async def change(connection: asyncpg.Connection) -> None:
                await users_db.update_profile(connection, user_id, **changes)
                await self.account_mail.queue_verification(connection, user, new_email,
                                                           change=True)

            await self.account_mail.in_transaction(change)
            updated = await users_db.get_user(self.db, user_id, self.email_cipher)
        else:
            updated = await users_db.update_profile(self.db, user_id, cipher=self.email_cipher,
                                                    **changes)
        await self.cache.forget_public_views(updated.username)
        if "avatar" in changes and changes["avatar"] != user.avatar:
            await self.images.remove(user.avatar)  # a file of ours that nothing shows any more
        return updated

    async def replace_avatar(self, user_id: int, data: bytes) -> User:
        """Store an uploaded image as the user's avatar (re-encoded); the old file goes."""
        url = await self.images.replace_avatar(user_id, data)
        previous = await users_db.get_user(self.db, user_id)
        user = await users_db.update_profile(self.db, user_id, cipher=self.email_cipher,
                                             avatar=url)
        await self.images.remove(previous.avatar)
        await self.cache.forget_public_views(user.username)
        return user

    async def rotate_email_encryption(self) -> int:
        """Re-encrypt every stored address (accounts', pending changes', queued mails') with the
        first configured key; how many changed."""
        changed = await users_db.rotate_email_encryption(self.db, self.email_cipher)
        changed += await mail_tokens.rotate_encryption(self.db, self.email_cipher)
        changed += await webhooks_db.rotate_encryption(self.db, self.email_cipher)
        return changed + await outbox.rotate_encryption(self.db, self.email_cipher)

    async def get_user(self, user_id: int) -> User:
        """The own profile: the address opened, the accepted policy version read."""
        return await users_db.get_user(self.db, user_id, self.email_cipher)

    def profile_reads(self, user_id: int) -> tuple[str, tuple[str, ...]]:
        """The cache entry `profile` answers from, to read ahead (`Cache.reads`). The current
        policy version is part of its key: a node serving a new policy answers anew."""
        return STREAMS_NAMESPACE, (f"profile:{user_id}:{self.consents.policy.version}",)

    async def profile(self, user_id: int, render: Callable[[User], Any],
                      prefetched: Prefetched | None = None) -> bytes:
        """The user's own profile, rendered by `render`, as JSON. Cached under the streams
        generation, which every write that changes it bumps (profile, avatar and password
        changes, follows, going live or ending, consents): the key is the signed-in user's own
        id."""
        async def load() -> bytes:
            return encode_json(render(await users_db.get_user(self.db, user_id,
                                                              self.email_cipher)))

        namespace, (key,) = self.profile_reads(user_id)
        return await self.cache.get_or_set_in(namespace, key, load, prefetched, INVALIDATED_TTL)

    @staticmethod
    def public_user_reads(username: str) -> tuple[None, tuple[str, ...]]:
        """The cache entry `public_user` answers from, to read ahead (`Cache.reads`)."""
        return None, (public_user_key(username),)

    async def public_user(self, username: str, render: Callable[[User], Any],
                          prefetched: Prefetched | None = None) -> bytes:
        """A user's public view, rendered by `render`, as JSON shared through the cache."""
        async def load() -> bytes:
            return encode_json(render(await users_db.get_user_by_username(self.db, username)))

        # Every change to a public profile deletes its key (`forget_public_views(username)`):
        # profile and avatar edits, follows, a stream going live, ending or turning private.
        return await self.cache.get_or_set(public_user_key(username), load, prefetched,
                                           INVALIDATED_TTL)

    async def _check_password(self, user: User, password: str, client_ip: str) -> bool:
        """A password check outside login, throttled like a login of the same account: a
        stolen token must not turn these endpoints into a guessing oracle."""
        account = f"u{user.id}"
        delay = await self.throttle.check(account, client_ip)
        if delay:
            await asyncio.sleep(delay)
        if await self._verify(password, user.password_hash):
            return True
        await self.throttle.failed(account, client_ip)
        return False

    async def delete_account(self, user_id: int, password: str, client_ip: str) -> datetime:
        """The owner deletes their account (checked like a password change: a 422 on
        `password`, throttled); hidden at once, erased after the grace period. When."""
        user = await users_db.get_user(self.db, user_id)
        if not await self._check_password(user, password, client_ip):
            raise ValidationFailed("Invalid input", fields={"password": ["is not correct"]})
        return await self.erasure.request(user)

    async def change_password(self, claims: TokenClaims, current: str, new: str,
                              client_ip: str) -> None:
        """Set a new password and revoke every other session of the user."""
        user = await users_db.get_user(self.db, claims.user_id)
        if not await self._check_password(user, current, client_ip):
            raise ValidationFailed("Invalid input",
                                   fields={"current_password": ["is not correct"]})
        if current == new:
            raise ValidationFailed("Invalid input",
                                   fields={"new_password": ["must differ from the current one"]})
        await users_db.set_password_hash(self.db, user.id, await self._hash(new))
        await self.account_mail.password_changed(user.id)
        await self.cache.forget_public_views()  # the cached profile's updated_at
        await self.sessions.revoke_all(user.id, keep_session=claims.session_id)
