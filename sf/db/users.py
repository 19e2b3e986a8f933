"""Users repository: accounts and profiles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

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
    deleted_at: datetime | None = None  # erasure requested: hidden everywhere (sf/db/erasure.py)


USER_COLUMNS = """u.id, u.username, u.email, u.password_hash, u.avatar, u.bio, u.followers_count,
    u.created_at, u.updated_at, u.deleted_at,
    EXISTS (SELECT 1 FROM streams s WHERE s.user_id = u.id AND s.is_live AND NOT s.is_private)
        AS is_live"""


# SQL: the user `u` has not asked for erasure. Every read that can show a user to anyone
# carries it; only login sees deleted accounts (to restore one within the grace period).
LISTED = "u.deleted_at IS NULL"


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
            " RETURNING *, false AS is_live",
            username, email, password_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    return user_from_row(row)


async def get_user(db: Executor, user_id: int) -> User:
    row = await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND {LISTED}",
                            user_id)
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row)


async def get_user_by_username(db: Executor, username: str) -> User:
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.username) = lower($1) AND {LISTED}",
        username
    )
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row)


async def find_user_for_login(db: Executor, login: str) -> User | None:
    """The user whose username or email is `login` (case-insensitive), or None; an account
    deleted within its grace period too (`deleted_at` says so), not an erased one."""
    column = "email" if "@" in login else "username"
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.{column}) = lower($1)"
        " AND u.erased_at IS NULL", login
    )
    return user_from_row(row) if row else None


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
