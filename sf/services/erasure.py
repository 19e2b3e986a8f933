"""Erasure use-cases: an account deleted by its owner disappears at once (sessions, stream key,
live stream, follows, invites, every public answer), is restored if its owner signs in with
`"restore": true` within the grace period, and otherwise has its personal data destroyed by
`purge_due` (the scheduled jobs call it); its username is released later still.

Every step is written to the erasure ledger in PostgreSQL and appended to a ledger file beside
the backups (`SF_BACKUP_DIR`, under `var/` by default), which survives losing the database:
`sf restore` re-applies both (`sf/ops/erasure_replay.py`), so a restored backup never brings
an erased person back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime
from pathlib import Path

import asyncpg

from sf.cache import Cache, public_user_key
from sf.config import Config
from sf.db import erasure as erasure_db
from sf.db import streams as streams_db
from sf.db.erasure import LedgerEntry
from sf.db.users import User
from sf.media import hls
from sf.media.images import remove_avatars_of
from sf.services.sessions import SessionStore
from sf.services.stream_keys import StreamKeyService
from sf.services.streams import StreamService

log = logging.getLogger("sf.erasure")

LEDGER_FILE_NAME = "erasure-ledger.jsonl"
PURGE_BATCH = 100


def ledger_file_of(config: Config) -> Path:
    """The append-only copy of the erasure ledger: beside the backups (by default under
    `var/`), where `sf restore` finds it even when the database it restores into is gone."""
    return config.backup_dir / LEDGER_FILE_NAME


def entry_to_json(entry: LedgerEntry) -> str:
    return json.dumps({"user_id": entry.user_id, "event": entry.event,
                       "categories": list(entry.categories),
                       "erase_after": entry.erase_after.isoformat() if entry.erase_after else None,
                       "at": entry.created_at.isoformat()}, sort_keys=True)


def entry_from_json(line: str) -> LedgerEntry:
    data = json.loads(line)
    return LedgerEntry(int(data["user_id"]), str(data["event"]), tuple(data["categories"]),
                       datetime.fromisoformat(data["erase_after"]) if data["erase_after"] else None,
                       datetime.fromisoformat(data["at"]))


def append_ledger_line(path: Path, entry: LedgerEntry) -> None:
    """Append one entry and flush it to disk (a line is small: one write, then fsync)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (entry_to_json(entry) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_ledger_file(path: Path) -> list[LedgerEntry]:
    """Every entry of a ledger file (a torn last line, from a crash mid-write, is skipped)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(entry_from_json(line))
        except (ValueError, KeyError, TypeError):
            log.warning("erasure ledger file: an unreadable line skipped")
    return entries


def remove_erased_files(media_dir: Path, user_id: int, destroyed: erasure_db.Destroyed) -> int:
    """Delete the files an erasure destroyed (every avatar of the user, the thumbnails of
    their streams, their export archives); how many were removed."""
    removed = remove_avatars_of(media_dir, user_id)
    candidates = [hls.thumbnails_dir(media_dir) / url.removeprefix(hls.THUMBNAILS_URL_PREFIX)
                  .split("?")[0] for url in destroyed.thumbnails
                  if url.startswith(hls.THUMBNAILS_URL_PREFIX)]
    exports = media_dir / "exports"
    candidates += [exports / file for file in destroyed.export_files]
    for path in candidates:
        roots = (hls.thumbnails_dir(media_dir).resolve(), exports.resolve())
        if not any(path.resolve().is_relative_to(root) for root in roots):
            continue  # a file name that would lead outside: never followed
        try:
            path.unlink()
            removed += 1
        except (FileNotFoundError, IsADirectoryError):
            pass
    return removed


class ErasureService:
    """Hides, restores and erases accounts, and keeps the ledger of it."""

    def __init__(self, config: Config, db: asyncpg.Pool, cache: Cache, sessions: SessionStore,
                 streams: StreamService, stream_keys: StreamKeyService) -> None:
        self.config = config
        self.db = db
        self.cache = cache
        self.sessions = sessions
        self.streams = streams
        self.stream_keys = stream_keys
        self.ledger_path = ledger_file_of(config)

    async def _append(self, entry: LedgerEntry) -> None:
        """The file copy of a ledger row already committed: a file that cannot be written is
        an operator's alert, not a failed request (the database's ledger holds the step)."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, append_ledger_line,
                                                             self.ledger_path, entry)
        except OSError as exc:
            log.error("erasure ledger file %s not written: %s", self.ledger_path, exc,
                      extra={"event": "erasure_ledger_file_failed", "user_id": entry.user_id})

    async def request(self, user: User) -> datetime:
        """The owner asked for erasure (password already checked): hide the account at once;
        when its data will be destroyed."""
        async with self.db.acquire() as connection, connection.transaction():
            erase_after = await erasure_db.mark_deleted(connection, user.id,
                                                        self.config.erasure_grace_days)
            hidden = await erasure_db.hide_account(connection, user.id)
            entry = await erasure_db.record(connection, user.id, erasure_db.REQUESTED,
                                            erasure_db.HIDDEN_AT_REQUEST, erase_after)
        await self._append(entry)
        # Every access and refresh token and WebSocket ticket needs its session.
        await self.sessions.revoke_all(user.id)
        await self.end_streams(hidden)
        await self.cache.forget_public_views(user.username)
        await self.cache.delete(*(public_user_key(name) for name in hidden.followed_usernames))
        log.info("erasure requested", extra={"event": "erasure_requested", "user_id": user.id})
        return erase_after

    async def end_streams(self, hidden: erasure_db.Hidden) -> None:
        """End the deleted account's open streams: viewers' sockets hear `stream_ended`, the
        publisher is dropped (through the ingest listener)."""
        for stream_id, was_live in hidden.open_streams:
            await self.streams.end_stream(stream_id)
            if not was_live:  # offline (its media node died): nobody was told by end_stream
                stream = await streams_db.load_stream(self.db, stream_id)
                if stream is not None:
                    await self.streams.tell_stream("ended", stream)

    async def restore(self, user: User) -> bool:
        """Its owner signed in with `"restore": true` within the grace period: the account is
        public again, with a new stream key (follows, invites and the old key stay gone)."""
        async with self.db.acquire() as connection, connection.transaction():
            if not await erasure_db.restore_account(connection, user.id):
                return False
            await self.stream_keys.create_for_new_user(connection, user)
            entry = await erasure_db.record(connection, user.id, erasure_db.RESTORED)
        await self._append(entry)
        await self.cache.forget_public_views(user.username)
        log.info("erasure cancelled", extra={"event": "erasure_restored", "user_id": user.id})
        return True

    async def erase(self, user_id: int) -> bool:
        """Destroy one deleted account's personal data now; False when there was nothing to
        do (not deleted, or already erased)."""
        async with self.db.acquire() as connection, connection.transaction():
            destroyed = await erasure_db.erase_personal_data(connection, user_id)
            if destroyed is None:
                return False
            entry = await erasure_db.record(connection, user_id, erasure_db.ERASED,
                                            erasure_db.DESTROYED_AT_ERASURE)
        await self._append(entry)
        await asyncio.get_running_loop().run_in_executor(
            None, remove_erased_files, self.config.media_dir, user_id, destroyed)
        log.info("account erased", extra={"event": "erased", "user_id": user_id})
        return True

    async def purge_summary(self) -> dict[str, int]:
        """`purge_due` as a scheduled job reports it."""
        return {"erased": await self.purge_due()}

    async def purge_due(self) -> int:
        """The scheduled job: erase every account past its grace period, and release the
        usernames reserved long enough; how many accounts were erased."""
        erased = 0
        while True:
            due = await erasure_db.due_for_erasure(self.db, PURGE_BATCH)
            done = [await self.erase(user_id) for user_id in due]
            erased += sum(done)
            if len(due) < PURGE_BATCH or not any(done):
                break
        released = await erasure_db.release_names(self.db,
                                                   self.config.erased_username_reserve_days)
        for user_id in released:
            await self._append(await erasure_db.record(self.db, user_id,
                                                       erasure_db.NAME_RELEASED, ("username",)))
        if erased or released:
            await self.cache.forget_public_views()
        return erased
