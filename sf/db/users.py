"""Users repository: accounts and profiles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.mail_tokens import PENDING_EMAIL_SQL
from sf.db.sql import Executor, set_clause
from sf.errors import Conflict, NotFound


@dataclass(frozen=True)
class User:
    """A user row plus `is_live` (whether one of their public streams is live now).

    A private live stream never shows in `is_live`: the profile is public.
    """

    id: int
    username: str
    email: str
    password_hash: str
    avatar: str | None
    bio: str
    followers_count: int
    created_at: datetime
    updated_at: datetime
    is_live: bool
    email_verified: bool = False
    pending_email: str | None = None  # an e-mail change waiting for its verification


USER_COLUMNS = f"""u.id, u.username, u.email, u.password_hash, u.avatar, u.bio, u.followers_count,
    u.created_at, u.updated_at,
    EXISTS (SELECT 1 FROM streams s WHERE s.user_id = u.id AND s.is_live AND NOT s.is_private)
        AS is_live, u.email_verified, {PENDING_EMAIL_SQL}"""


def user_from_row(row: asyncpg.Record) -> User:
    return User(**{key: row[key] for key in User.__dataclass_fields__})


def _conflict(exc: asyncpg.UniqueViolationError) -> Conflict:
    constraint = exc.constraint_name or ""
    field = "email" if "email" in constraint else "username"
    return Conflict(f"That {field} is already taken", fields={field: ["already taken"]})


async def create_user(db: Executor, username: str, email: str, password_hash: str) -> User:
    """Insert a user; Conflict (409) when the username or email is taken (case-insensitively)."""
    try:
        row = await db.fetchrow(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)"
            " RETURNING *, false AS is_live, NULL AS pending_email",
            username, email, password_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    return user_from_row(row)


async def get_user(db: Executor, user_id: int) -> User:
    row = await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1", user_id)
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row)


async def get_user_by_username(db: Executor, username: str) -> User:
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.username) = lower($1)", username
    )
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row)


async def find_user_for_login(db: Executor, login: str) -> User | None:
    """The user whose username or email is `login` (case-insensitive), or None."""
    column = "email" if "@" in login else "username"
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.{column}) = lower($1)", login
    )
    return user_from_row(row) if row else None


async def find_user_by_email(db: Executor, email: str) -> User | None:
    """The user whose address is `email` (case-insensitive), or None; a pending address of an
    unconfirmed change does not count."""
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.email) = lower($1)", email)
    return user_from_row(row) if row else None


async def email_taken(db: Executor, email: str, user_id: int) -> bool:
    """Whether another account has `email` as its address (case-insensitive)."""
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1) AND id <> $2)",
        email, user_id))


async def confirm_email(db: Executor, user_id: int, new_email: str | None) -> None:
    """Mark the account's address verified, first moving it to `new_email` when that is given
    (a confirmed change); Conflict (409) when another account took that address meanwhile."""
    try:
        await db.execute(
            "UPDATE users SET email = coalesce($2, email), email_verified = true,"
            " updated_at = now() WHERE id = $1", user_id, new_email)
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None


_UNSET = object()


async def update_profile(db: Executor, user_id: int, *, email: object = _UNSET, bio: object = _UNSET,
                         avatar: object = _UNSET) -> User:
    """Change the given profile fields (others stay); Conflict when the email is taken."""
    changes = {name: value for name, value in (("email", email), ("bio", bio), ("avatar", avatar))
               if value is not _UNSET}
    if not changes:
        return await get_user(db, user_id)
    assignments = set_clause(changes, 2)
    try:
        result = await db.execute(
            f"UPDATE users SET {assignments} WHERE id = $1",
            user_id, *changes.values(),
        )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    if result.endswith(" 0"):
        raise NotFound("User not found")
    return await get_user(db, user_id)


async def set_password_hash(db: Executor, user_id: int, password_hash: str) -> None:
    await db.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id, password_hash,
    )


async def account_age_seconds(db: Executor, user_id: int) -> float:
    """How long ago the account was created, by the database's clock (0 for no such user)."""
    age = await db.fetchval(
        "SELECT EXTRACT(epoch FROM now() - created_at) FROM users WHERE id = $1", user_id)
    return float(age) if age is not None else 0.0
