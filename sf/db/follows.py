"""Follows repository; followers_count (and the followers gained by a live stream) change in
the same transaction as the follow row."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from sf.db import statistics as statistics_db
from sf.db import users as users_db
from sf.db.pagination import decode_cursor, encode_cursor
from sf.db.sql import Executor
from sf.db.users import User
from sf.errors import validation_error


async def follow(db: asyncpg.Pool, follower_id: int, username: str) -> tuple[User, bool]:
    """Follow `username` (idempotent); the followed user, and whether this made the follow
    (False: it was there already)."""
    async with db.acquire() as connection, connection.transaction():
        target = await users_db.get_user_by_username(connection, username)
        if target.id == follower_id:
            raise validation_error("username", "you cannot follow yourself")
        inserted = await connection.fetchval(
            "INSERT INTO follows (follower_id, following_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING id", follower_id, target.id)
        if inserted is not None:
            await connection.execute(
                "UPDATE users SET followers_count = followers_count + 1 WHERE id = $1", target.id)
            await statistics_db.count_new_follower(connection, target.id)
    return target, inserted is not None


async def unfollow(db: asyncpg.Pool, follower_id: int, username: str) -> User:
    """Stop following `username` (idempotent); returns the user."""
    async with db.acquire() as connection, connection.transaction():
        target = await users_db.get_user_by_username(connection, username)
        followed_at = await connection.fetchval(
            "DELETE FROM follows WHERE follower_id = $1 AND following_id = $2"
            " RETURNING created_at", follower_id, target.id)
        if followed_at is not None:
            await connection.execute(
                "UPDATE users SET followers_count = followers_count - 1 WHERE id = $1", target.id)
            await statistics_db.uncount_lost_follower(connection, target.id, followed_at)
    return target


async def list_follow_side(db: Executor, username: str, side: str, limit: int,
                           cursor: str | None) -> tuple[list[User], str | None]:
    """Followers (side="followers") or followed users (side="following"), newest first."""
    user = await users_db.get_user_by_username(db, username)
    anchor, other = (("following_id", "follower_id") if side == "followers"
                     else ("follower_id", "following_id"))
    args: list[object] = [user.id]
    keyset = ""
    if cursor:
        created, last_id = decode_cursor(cursor, side, datetime)
        args += [created, last_id]
        keyset = "AND (f.created_at, f.id) < ($2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(
        f"""SELECT {users_db.USER_COLUMNS}, f.created_at AS followed_at, f.id AS follow_id
              FROM follows f JOIN users u ON u.id = f.{other}
             WHERE f.{anchor} = $1 AND {users_db.LISTED} {keyset}
             ORDER BY f.created_at DESC, f.id DESC LIMIT ${len(args)}""", *args)
    page = rows[:limit]
    users = [users_db.user_from_row(row) for row in page]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(side, page[-1]["followed_at"], page[-1]["follow_id"])
    return users, next_cursor
