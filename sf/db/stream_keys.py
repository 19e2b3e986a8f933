"""Stream keys and default stream settings repository.

The key is stored only sealed (AES-GCM) plus an HMAC digest; lookups go by digest and are
confirmed with a constant-time comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.sql import Executor, set_clause
from sf.errors import NotFound, validation_error
from sf.security import StreamKeyCipher


@dataclass(frozen=True)
class StreamKey:
    """A user's current key, decrypted for its owner."""

    user_id: int
    stream_key: str
    updated_at: datetime


@dataclass(frozen=True)
class StreamSettings:
    """Defaults for the next stream a user goes live with."""

    title: str
    description: str
    category_id: int | None
    is_private: bool
    source_passthrough: bool
    updated_at: datetime


async def _store(db: Executor, cipher: StreamKeyCipher, user_id: int, sql: str) -> StreamKey:
    key = cipher.new_key(user_id)
    sealed = cipher.encrypt(key, user_id)
    row = await db.fetchrow(sql, user_id, sealed.key_id, sealed.ciphertext, sealed.digest)
    if row is None:
        raise NotFound("User not found")
    return StreamKey(user_id, key, row["updated_at"])


async def create_stream_key(db: Executor, cipher: StreamKeyCipher, user_id: int) -> StreamKey:
    """Give a new user their first key and empty default settings."""
    key = await _store(db, cipher, user_id,
                       "INSERT INTO stream_keys (user_id, key_id, ciphertext, digest)"
                       " VALUES ($1, $2, $3, $4) RETURNING updated_at")
    await db.execute("INSERT INTO stream_settings (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
                     user_id)
    return key


async def reset_stream_key(db: Executor, cipher: StreamKeyCipher, user_id: int) -> StreamKey:
    """Replace the key; the old one stops matching at once (its digest is gone)."""
    return await _store(db, cipher, user_id,
                        "UPDATE stream_keys SET key_id = $2, ciphertext = $3, digest = $4,"
                        " updated_at = now() WHERE user_id = $1 RETURNING updated_at")


async def get_stream_key(db: Executor, cipher: StreamKeyCipher, user_id: int) -> StreamKey:
    row = await db.fetchrow(
        "SELECT key_id, ciphertext, updated_at FROM stream_keys WHERE user_id = $1", user_id)
    if row is None:
        raise NotFound("Stream key not found")
    key = cipher.decrypt(row["key_id"], row["ciphertext"], user_id)
    return StreamKey(user_id, key, row["updated_at"])


async def find_user_by_key(db: Executor, cipher: StreamKeyCipher, presented: str) -> int | None:
    """The owner of a presented key, or None; digest lookup then a constant-time check."""
    if not presented or len(presented) > 200:
        return None
    digest = cipher.digest(presented)
    row = await db.fetchrow("SELECT user_id, digest FROM stream_keys WHERE digest = $1", digest)
    if row is None or not cipher.matches(presented, bytes(row["digest"])):
        return None
    return int(row["user_id"])


async def sealed_key(db: Executor, user_id: int) -> bytes | None:
    """The sealed current key (what a stream row records as the key that published it)."""
    value = await db.fetchval("SELECT ciphertext FROM stream_keys WHERE user_id = $1", user_id)
    return bytes(value) if value is not None else None


async def rotate_encryption(db: asyncpg.Pool, cipher: StreamKeyCipher) -> int:
    """Re-seal every key not under the current encryption key; return how many changed."""
    changed = 0
    async with db.acquire() as connection, connection.transaction():
        rows = await connection.fetch(
            "SELECT user_id, key_id, ciphertext FROM stream_keys WHERE key_id <> $1 FOR UPDATE",
            cipher.current_key_id)
        for row in rows:
            plain = cipher.decrypt(row["key_id"], row["ciphertext"], row["user_id"])
            sealed = cipher.encrypt(plain, row["user_id"])
            await connection.execute(
                "UPDATE stream_keys SET key_id = $2, ciphertext = $3 WHERE user_id = $1",
                row["user_id"], sealed.key_id, sealed.ciphertext)
            changed += 1
    return changed


SETTINGS_COLUMNS = "title, description, category_id, is_private, source_passthrough, updated_at"


async def get_settings(db: Executor, user_id: int) -> StreamSettings:
    row = await db.fetchrow(f"SELECT {SETTINGS_COLUMNS} FROM stream_settings WHERE user_id = $1",
                            user_id)
    if row is None:
        raise NotFound("Stream settings not found")
    return StreamSettings(**dict(row))


async def update_settings(db: Executor, user_id: int, changes: dict[str, object]) -> StreamSettings:
    """Change the given default settings; an unknown category is a 422."""
    if not changes:
        return await get_settings(db, user_id)
    assignments = set_clause(changes, 2)
    try:
        row = await db.fetchrow(
            f"UPDATE stream_settings SET {assignments} WHERE user_id = $1"
            f" RETURNING {SETTINGS_COLUMNS}", user_id, *changes.values())
    except asyncpg.ForeignKeyViolationError:
        raise validation_error("category_id", "no such category") from None
    if row is None:
        raise NotFound("Stream settings not found")
    return StreamSettings(**dict(row))
