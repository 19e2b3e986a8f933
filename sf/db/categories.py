"""Categories repository: public reads and the admin commands' writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.pagination import decode_cursor, encode_cursor
from sf.db.sql import Executor, set_clause
from sf.errors import Conflict, NotFound

COLUMNS = "id, name, description, thumbnail, viewers_count, created_at, updated_at"


@dataclass(frozen=True)
class Category:
    """A category; `viewers_count` is the sum over its live streams (kept by a trigger)."""

    id: int
    name: str
    description: str
    thumbnail: str | None
    viewers_count: int
    created_at: datetime
    updated_at: datetime


def _category(row: asyncpg.Record) -> Category:
    return Category(**dict(row))


async def list_categories(db: Executor, limit: int, cursor: str | None
                          ) -> tuple[list[Category], str | None]:
    """By viewers (most first), then name; keyset-paginated."""
    args: list[object] = []
    keyset = ""
    if cursor:
        value, last_id = decode_cursor(cursor, "categories", int)
        name = await db.fetchval("SELECT name FROM categories WHERE id = $1", last_id)
        if name is not None:
            args += [-value, name, last_id]
            keyset = "WHERE (-viewers_count, name, id) > ($1, $2, $3)"
    args.append(limit + 1)
    rows = await db.fetch(f"SELECT {COLUMNS} FROM categories {keyset}"
                          f" ORDER BY viewers_count DESC, name, id LIMIT ${len(args)}", *args)
    items = [_category(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor("categories", items[-1].viewers_count, items[-1].id)
    return items, next_cursor


async def get_category(db: Executor, category_id: int) -> Category:
    row = await db.fetchrow(f"SELECT {COLUMNS} FROM categories WHERE id = $1", category_id)
    if row is None:
        raise NotFound("Category not found")
    return _category(row)


async def add_category(db: Executor, name: str, description: str = "",
                       thumbnail: str | None = None) -> Category:
    try:
        row = await db.fetchrow(
            f"INSERT INTO categories (name, description, thumbnail) VALUES ($1, $2, $3)"
            f" RETURNING {COLUMNS}", name, description, thumbnail)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"A category named {name!r} exists") from None
    return _category(row)


async def update_category(db: Executor, category_id: int, changes: dict[str, object]) -> Category:
    if not changes:
        return await get_category(db, category_id)
    assignments = set_clause(changes, 2)
    try:
        row = await db.fetchrow(
            f"UPDATE categories SET {assignments} WHERE id = $1"
            f" RETURNING {COLUMNS}", category_id, *changes.values())
    except asyncpg.UniqueViolationError:
        raise Conflict("A category with that name exists") from None
    if row is None:
        raise NotFound("Category not found")
    return _category(row)


async def remove_category(db: Executor, category_id: int) -> int:
    """Delete a category; its streams (and stream defaults) move to no category. Streams moved."""
    moved = await db.fetchval(
        "SELECT count(*) FROM streams WHERE category_id = $1", category_id)
    result = await db.execute("DELETE FROM categories WHERE id = $1", category_id)
    if result.endswith(" 0"):
        raise NotFound("Category not found")
    return int(moved)
