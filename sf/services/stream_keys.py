"""Stream key use-cases: each account's key (created at registration, shown, reset, its
encryption rotated) and the default settings a stream opened by publishing starts with."""

from __future__ import annotations

from typing import Any

import asyncpg

from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.stream_keys import StreamKey, StreamSettings
from sf.db.users import User
from sf.security import StreamKeyCipher
from sf.services.streams import StreamService


class StreamKeyService:
    """A streamer's stream key and default stream settings."""

    def __init__(self, db: asyncpg.Pool, cipher: StreamKeyCipher, streams: StreamService) -> None:
        self.db = db
        self.cipher = cipher
        self.streams = streams

    async def create_for_new_user(self, connection: asyncpg.Connection, user: User) -> None:
        """Part of registration: every account gets a key and default settings."""
        await keys_db.create_stream_key(connection, self.cipher, user.id)

    async def get_key(self, user_id: int) -> StreamKey:
        return await keys_db.get_stream_key(self.db, self.cipher, user_id)

    async def reset_key(self, user_id: int) -> StreamKey:
        """New key; the old one stops working now and a live publish that used it ends."""
        async with self.db.acquire() as connection, connection.transaction():
            key = await keys_db.reset_stream_key(connection, self.cipher, user_id)
            live_id = await streams_db.live_stream_of(connection, user_id)
        if live_id is not None:
            await self.streams.end_stream(live_id)
        return key

    async def rotate_key_encryption(self) -> int:
        """Re-encrypt every stream key with the first configured key; how many changed."""
        return await keys_db.rotate_encryption(self.db, self.cipher)

    async def get_settings(self, user_id: int) -> StreamSettings:
        return await keys_db.get_settings(self.db, user_id)

    async def update_settings(self, user_id: int, changes: dict[str, Any]) -> StreamSettings:
        return await keys_db.update_settings(self.db, user_id, changes)
