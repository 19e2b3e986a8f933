"""Account use-cases: register, log in, refresh, log out, change password."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from sf.db import users as users_db
from sf.db.users import User
from sf.errors import Unauthorized, ValidationFailed
from sf.ratelimit import LoginThrottle
from sf.security import PasswordHasher, TokenClaims
from sf.sessions import IssuedTokens, SessionStore


@dataclass(frozen=True)
class LoginResult:
    """The user and the token pair of a new or refreshed session."""

    user: User
    tokens: IssuedTokens


class AccountService:
    """Ties the users repository, password hashing and the session store together."""

    def __init__(self, db: asyncpg.Pool, hasher: PasswordHasher, sessions: SessionStore,
                 throttle: LoginThrottle, on_user_created: list | None = None) -> None:
        self.db = db
        self.hasher = hasher
        self.sessions = sessions
        self.throttle = throttle
        # Callbacks run inside the registration transaction (e.g. creating the stream key).
        self.on_user_created = on_user_created or []

    async def _hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self.hasher.executor, self.hasher.hash, password)

    async def _verify(self, password: str, password_hash: str | None) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            self.hasher.executor, self.hasher.verify, password, password_hash)

    async def register(self, username: str, email: str, password: str) -> LoginResult:
        password_hash = await self._hash(password)
        async with self.db.acquire() as connection, connection.transaction():
            user = await users_db.create_user(connection, username, email, password_hash)
            for callback in self.on_user_created:
                await callback(connection, user)
        return LoginResult(user, await self.sessions.create(user.id))

    async def login(self, login: str, password: str, client_ip: str) -> LoginResult:
        """Same answer and about the same time for an unknown user and a wrong password.

        Failures are throttled per account (see `LoginThrottle`), whichever of username or
        email names it.
        """
        user = await users_db.find_user_for_login(self.db, login)
        account = (f"u{user.id}" if user else
                   "n" + hashlib.sha256(login.lower().encode()).hexdigest()[:32])
        delay = await self.throttle.check(account, client_ip)
        if delay:
            await asyncio.sleep(delay)
        ok = await self._verify(password, user.password_hash if user else None)
        if not ok or user is None:
            await self.throttle.failed(account, client_ip)
            raise Unauthorized("Invalid credentials")
        await self.throttle.succeeded(account, client_ip)
        return LoginResult(user, await self.sessions.create(user.id))

    async def refresh(self, refresh_token: str) -> LoginResult:
        tokens = await self.sessions.rotate(refresh_token)
        try:
            user = await users_db.get_user(self.db, tokens.user_id)
        except Exception:
            raise Unauthorized("Session expired or revoked") from None
        return LoginResult(user, tokens)

    async def logout(self, claims: TokenClaims) -> None:
        await self.sessions.revoke(claims)

    async def update_profile(self, user_id: int, changes: dict[str, Any],
                             current_password: str | None = None) -> User:
        """Apply profile `changes` (email, bio, avatar; others stay).

        Changing the email needs the current password: missing or wrong is a 422 on
        `current_password`. A password that is given is checked whatever else changes.
        """
        user = await users_db.get_user(self.db, user_id)
        if current_password is None:
            if "email" in changes and changes["email"] != user.email:
                raise ValidationFailed("Invalid input", fields={
                    "current_password": ["required to change the email"]})
        elif not await self._verify(current_password, user.password_hash):
            raise ValidationFailed("Invalid input",
                                   fields={"current_password": ["is not correct"]})
        return await users_db.update_profile(self.db, user_id, **changes)

    async def change_password(self, claims: TokenClaims, current: str, new: str) -> None:
        """Set a new password and revoke every other session of the user."""
        user = await users_db.get_user(self.db, claims.user_id)
        if not await self._verify(current, user.password_hash):
            raise ValidationFailed("Invalid input",
                                   fields={"current_password": ["is not correct"]})
        if current == new:
            raise ValidationFailed("Invalid input",
                                   fields={"new_password": ["must differ from the current one"]})
        await users_db.set_password_hash(self.db, user.id, await self._hash(new))
        await self.sessions.revoke_all(user.id, keep_session=claims.session_id)
