"""Allowed-viewers repository: who may see a channel's private streams (its owner's invites)."""

from __future__ import annotations

from datetime import datetime

from sf.db import users as users_db
from sf.db.pagination import decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.db.users import User
from sf.errors import validation_error


async def allow(db: Executor, owner_id: int, username: str) -> User:
    """Invite `username` to the owner's private streams (idempotent); the invited user."""
    viewer = await users_db.get_user_by_username(db, username)
    if viewer.id == owner_id:
        raise validation_error("username", "you always see your own streams")
    await db.execute(
        "INSERT INTO allowed_viewers (owner_id, viewer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        owner_id, viewer.id)
    return viewer


async def revoke(db: Executor, owner_id: int, username: str) -> User:
    """Withdraw an invite (idempotent); the user it concerned."""
    viewer = await users_db.get_user_by_username(db, username)
    await db.execute("DELETE FROM allowed_viewers WHERE owner_id = $1 AND viewer_id = $2",
                     owner_id, viewer.id)
    return viewer


async def list_allowed(db: Executor, owner_id: int, limit: int,
                       cursor: str | None) -> tuple[list[User], str | None]:
    """The owner's invited viewers, newest invite first, keyset-paginated."""
    args: list[object] = [owner_id]
    keyset = ""
    if cursor:
        created, last_id = decode_cursor(cursor, "allowed", datetime)
        args += [created, last_id]
        keyset = "AND (a.created_at, a.id) < ($2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""SELECT {users_db.USER_COLUMNS}, a.created_at AS invited_at, a.id AS invite_id
              FROM allowed_viewers a JOIN users u ON u.id = a.viewer_id
             WHERE a.owner_id = $1 AND {users_db.LISTED} {keyset}
             ORDER BY a.created_at DESC, a.id DESC LIMIT ${len(args)}""", *args)
    page = rows[:limit]
    users = [users_db.user_from_row(row) for row in page]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("allowed", page[-1]["invited_at"], page[-1]["invite_id"])
    return users, next_cursor
