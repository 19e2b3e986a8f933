"""`sf restore` never brings an erased person back: the erasure ledger is read before the
restore (from the live database when it is reachable, and from the ledger file beside the
backups, which survives losing the database), and every step it records is applied again to
the restored data afterwards.

Each account's last step decides (requested: hidden again; restored: public again; erased or
name released: its personal data destroyed again). An entry applies only to the account it
was written for: a row created after the entry is a newer account that reuses the id (a
restore rewinds the id sequences), and is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import asyncpg

from sf.cache import Cache
from sf.config import Config
from sf.db import erasure as erasure_db
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.erasure import LedgerEntry
from sf.redis_client import open_redis
from sf.security import StreamKeyCipher
from sf.services.erasure import ledger_file_of, read_ledger_file, remove_erased_files

CONNECT_TIMEOUT = 10.0


class ReplayError(Exception):
    """The erasures could not be applied again to the restored database."""


def _key(entry: LedgerEntry) -> tuple[int, str, Any]:
    return entry.user_id, entry.event, entry.created_at


async def _database_ledger(database_url: str) -> list[LedgerEntry]:
    connection = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT)
    try:
        return await erasure_db.ledger(connection)
    finally:
        await connection.close()


def read_ledger(config: Config) -> list[LedgerEntry]:
    """Before a restore: every erasure step the live database and the ledger file know of,
    oldest first (a database that is lost, empty or not yet migrated adds nothing)."""
    entries = {_key(entry): entry for entry in read_ledger_file(ledger_file_of(config))}
    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        for entry in asyncio.run(_database_ledger(config.database_url)):
            entries[_key(entry)] = entry
    return sorted(entries.values(), key=lambda entry: entry.created_at)


async def _hide(connection: asyncpg.Connection, user_id: int, entries: list[LedgerEntry]) -> None:
    """Delete the account again as its request did (same erase_after) and end its streams."""
    request = next((entry for entry in reversed(entries)
                    if entry.event == erasure_db.REQUESTED), None)
    await erasure_db.mark_deleted(connection, user_id, 0,
                                  request.erase_after if request else entries[-1].created_at)
    hidden = await erasure_db.hide_account(connection, user_id)
    for stream_id, _ in hidden.open_streams:
        await streams_db.end_stream(connection, stream_id)


async def _apply(connection: asyncpg.Connection, config: Config, cipher: StreamKeyCipher,
                 user_id: int, entries: list[LedgerEntry]) -> erasure_db.Destroyed | bool:
    """Bring one account to the state its last ledger entry says; whether anything changed
    (the files to remove, for an erasure applied again)."""
    state = await erasure_db.erasure_state(connection, user_id)
    if state is None or state.created_at > entries[0].created_at:
        return False  # gone, or another (newer) account with the same id
    for entry in entries:  # the restored ledger misses the entries newer than the backup
        await erasure_db.record(connection, user_id, entry.event, entry.categories,
                                entry.erase_after, entry.created_at)
    last = entries[-1].event
    if last == erasure_db.RESTORED:
        if state.deleted_at is None or state.erased_at is not None:
            return False
        await erasure_db.restore_account(connection, user_id)
        if await keys_db.sealed_key(connection, user_id) is None:
            await keys_db.create_stream_key(connection, cipher, user_id)
        return True
    changed = False
    if state.deleted_at is None:
        await _hide(connection, user_id, entries)
        changed = True
    if last == erasure_db.REQUESTED:
        return changed
    destroyed = await erasure_db.erase_personal_data(connection, user_id)
    if last == erasure_db.NAME_RELEASED:
        changed = await erasure_db.release_name(connection, user_id) or changed
    return destroyed if destroyed is not None else changed


async def _replay(config: Config, entries: list[LedgerEntry]) -> int:
    by_user: dict[int, list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        by_user[entry.user_id].append(entry)
    cipher = StreamKeyCipher(config.stream_key_encryption_keys, config.stream_key_lookup_secret)
    applied = 0
    connection = await asyncpg.connect(config.database_url, timeout=CONNECT_TIMEOUT)
    try:
        for user_id, user_entries in sorted(by_user.items()):
            async with connection.transaction():
                outcome = await _apply(connection, config, cipher, user_id, user_entries)
            if isinstance(outcome, erasure_db.Destroyed):
                await asyncio.to_thread(remove_erased_files, config.media_dir, user_id, outcome)
            applied += bool(outcome)
    finally:
        await connection.close()
    if applied:
        redis = open_redis(config.redis_url, socket_connect_timeout=5)
        try:  # API nodes started on the restored data must not answer from older pages
            await Cache(redis, config.cache_ttl).forget_public_views()
        finally:
            await redis.aclose()
    return applied


def replay(config: Config, entries: list[LedgerEntry]) -> int:
    """After a restore: apply `entries` (from `read_ledger`) to the restored database; how
    many accounts changed. ReplayError when it cannot be done."""
    if not entries:
        return 0
    try:
        return asyncio.run(_replay(config, entries))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ReplayError(
            f"the erasures recorded since the backup could not be applied again "
            f"({type(exc).__name__}: {exc}); run `sf restore` again before starting the API "
            "nodes") from None
