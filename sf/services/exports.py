"""Personal data exports: requested over the API, built off the request path, downloaded by
their owner through a signed URL until they expire.

A request inserts a pending row (one pending per user, a few per day) and starts the build in
the background of the node that took it. The build reads the owner's data from one
PostgreSQL snapshot a page at a time (server-side cursors) and hands each page to the export
thread, which writes it into a ZIP (`zipfile`, entries streamed) in a temporary file that is
renamed into place when complete: memory holds one page, the loop never waits on a file. A
node that dies mid-build leaves a pending row, which the scheduled jobs mark failed after
SF_EXPORT_STALE_MINUTES; its partial file (a `.part`) is swept with the expired exports.

The download URL is `/api/v1/users/profile/exports/<id>/download?expires=<t>&signature=<s>`,
the signature an HMAC-SHA256 over (export id, owner's user id, expiry) under a key derived
from SF_INTERNAL_SECRET for this purpose alone; it is valid until the export expires
(SF_EXPORT_TTL_HOURS after it was built), when file and row are deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
import zipfile
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg

from sf.config import Config
from sf.db import exports as exports_db
from sf.db import users as users_db
from sf.db.exports import Export
from sf.errors import Forbidden, NotFound
from sf.media.images import AVATAR_URL_PREFIX
from sf.security import EmailCipher

log = logging.getLogger("sf.exports")

DOWNLOAD_PATH = "/api/v1/users/profile/exports/{id}/download"
PAGE_ROWS = 500  # rows a build holds in memory at once (one page of one section)
CHUNK_BYTES = 64 * 1024  # a download is read and sent this much at a time
_FILE_NAME = re.compile(r"[0-9]{1,19}-[A-Za-z0-9_-]{22}\.zip")


class ExportLinkSigner:
    """Signs and checks download links: HMAC-SHA256 over export id, owner and expiry, under a
    key derived from SF_INTERNAL_SECRET for this purpose alone (playback URLs and viewer
    cookies use other derived keys, so no signature of one is valid as another)."""

    PURPOSE = b"sf personal data export download v1"

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), self.PURPOSE, hashlib.sha256).digest()

    def signature(self, export_id: int, user_id: int, expires: int) -> str:
        digest = hmac.new(self._key, f"{export_id}:{user_id}:{expires}".encode(),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def valid(self, export_id: int, user_id: int, expires: int, signature: str) -> bool:
        return hmac.compare_digest(signature.encode(),
                                   self.signature(export_id, user_id, expires).encode())


@dataclass(frozen=True)
class ExportView:
    """An export as its owner sees it (`GET /api/users/profile/exports`)."""

    id: int
    status: str
    created_at: datetime
    expires_at: datetime | None
    download_url: str | None


@dataclass(frozen=True)
class Download:
    """A ready archive its owner's signed link opened: where it is and what to call it."""

    path: Path
    size: int
    filename: str


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):  # ISO 8601 UTC with Z, as the API writes times
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _encode(value: Any) -> bytes:
    return json.dumps(value, default=_json_value, ensure_ascii=False, indent=1).encode()


class ExportArchive:
    """A ZIP being written on the export thread, one JSON file at a time, list files a page
    of items at a time. Only ever used by one thread at a time (the build awaits each call)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self._entry: IO[bytes] | None = None
        self._first = True

    def write_json(self, name: str, value: Any) -> None:
        self.zip.writestr(name, _encode(value))

    def begin_list(self, name: str) -> None:
        self._entry = self.zip.open(name, "w", force_zip64=True)
        self._entry.write(b"[")
        self._first = True

    def write_items(self, items: list[dict[str, Any]]) -> None:
        assert self._entry is not None
        for item in items:
            self._entry.write(b"\n" if self._first else b",\n")
            self._entry.write(json.dumps(item, default=_json_value,
                                         ensure_ascii=False).encode())
            self._first = False

    def end_list(self) -> None:
        assert self._entry is not None
        self._entry.write(b"\n]\n")
        self._entry.close()
        self._entry = None

    def add_file(self, source: Path, name: str) -> None:
        if source.is_file():
            self.zip.write(source, name)

    def close(self) -> int:
        """Finish the ZIP; its size in bytes."""
        self.zip.close()
        return self.path.stat().st_size

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self._entry is not None:
                self._entry.close()
        with contextlib.suppress(Exception):
            self.zip.close()
        self.path.unlink(missing_ok=True)


class ExportService:
    """Requests, builds, lists, serves and expires personal data exports."""

    def __init__(self, config: Config, db: asyncpg.Pool, email_cipher: EmailCipher) -> None:
        self.config = config
        self.db = db
        self.email_cipher = email_cipher
        self.dir = config.media_dir / "exports"
        self.signer = ExportLinkSigner(config.internal_secret)
        # One thread writes archives (ZIP and file IO never on the loop); builds on this node
        # take turns, so at most one archive is being written here at a time.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-export")
        self._turn = asyncio.Semaphore(1)
        self._builds: set[asyncio.Task[None]] = set()

    # --- requests and reads ----------------------------------------------------------------

    async def request(self, user_id: int) -> Export:
        """A new pending export of the user's data, built in the background of this node.
        Conflict while one is pending, RateLimited past SF_EXPORTS_PER_DAY."""
        export = await exports_db.create(self.db, user_id, self.config.exports_per_day)
        task = asyncio.ensure_future(self.build(export.id, user_id))
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)
        return export

    def download_url(self, export: Export) -> str | None:
        """The signed link of a ready export (valid until it expires), else None."""
        if export.status != "ready" or export.expires_at is None:
            return None
        expires = int(export.expires_at.timestamp())
        signature = self.signer.signature(export.id, export.user_id, expires)
        return f"{DOWNLOAD_PATH.format(id=export.id)}?expires={expires}&signature={signature}"

    async def list_exports(self, user_id: int, limit: int,
                           cursor: str | None) -> tuple[list[ExportView], str | None]:
        rows, next_cursor = await exports_db.list_page(self.db, user_id, limit, cursor)
        return [ExportView(row.id, row.status, row.created_at, row.expires_at,
                           self.download_url(row)) for row in rows], next_cursor

    async def open_download(self, export_id: int, expires: int, signature: str) -> Download:
        """The archive a signed link names. Forbidden when the link has expired; NotFound for a
        wrong signature, another export's link, or an export that is not (or no longer)
        ready: nothing tells a guessed id from a real one."""
        if expires < time.time():
            raise Forbidden("This download link has expired; request a new export")
        export = await exports_db.get(self.db, export_id)
        if export is None or not self.signer.valid(export.id, export.user_id, expires, signature) \
                or export.status != "ready" or export.file is None or export.expires_at is None \
                or int(export.expires_at.timestamp()) != expires:
            raise NotFound("No such export")
        path = self.dir / export.file
        size = await asyncio.get_running_loop().run_in_executor(None, _size_or_none, path)
        if size is None:
            raise NotFound("No such export")
        return Download(path, size, f"sf-export-{export.id}.zip")

    async def read_chunks(self, path: Path) -> AsyncGenerator[bytes, None]:
        """The file's bytes, CHUNK_BYTES at a time, each read on a worker thread."""
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, path.open, "rb")
        try:
            while chunk := await loop.run_in_executor(None, handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            await loop.run_in_executor(None, handle.close)

    # --- building --------------------------------------------------------------------------

    async def build(self, export_id: int, user_id: int) -> None:
        """Write the user's archive and mark the export ready; failed if anything goes wrong,
        the node stopping included (a node that dies leaves it to `fail_stale`)."""
        try:
            async with self._turn:
                await self._build(export_id, user_id)
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                log.error("building export %s failed", export_id, exc_info=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(exports_db.mark_failed(self.db, export_id,
                                                            self.config.export_ttl_hours))
            if not isinstance(error, Exception):
                raise

    async def _build(self, export_id: int, user_id: int) -> None:
        loop = asyncio.get_running_loop()
        name = f"{export_id}-{secrets.token_urlsafe(16)}.zip"
        partial = self.dir / f".{name}.part"
        await loop.run_in_executor(self.executor, _make_dir, self.dir)
        archive = await loop.run_in_executor(self.executor, ExportArchive, partial)
        try:
            await self._write_data(archive, user_id)
            size = await loop.run_in_executor(self.executor, archive.close)
            await loop.run_in_executor(self.executor, os.replace, partial, self.dir / name)
        except BaseException:
            # Queued, not awaited (a cancelled build cannot wait): the thread runs it after
            # whatever it is writing now.
            self.executor.submit(archive.discard)
            raise
        if not await exports_db.mark_ready(self.db, export_id, name, size,
                                           self.config.export_ttl_hours):
            await loop.run_in_executor(self.executor, _unlink, self.dir / name)

    async def _write_data(self, archive: ExportArchive, user_id: int) -> None:
        loop = asyncio.get_running_loop()

        async def on_thread(function: Any, *args: Any) -> Any:
            return await loop.run_in_executor(self.executor, function, *args)

        async with self.db.acquire() as connection, \
                connection.transaction(isolation="repeatable_read", readonly=True):
            user = await users_db.get_user(connection, user_id, self.email_cipher)
            await on_thread(archive.write_json, "profile.json", {
                "id": user.id, "username": user.username, "email": user.email,
                "avatar": user.avatar, "bio": user.bio, "followers_count": user.followers_count,
                "created_at": user.created_at, "updated_at": user.updated_at})
            await on_thread(archive.write_json, "consents.json",
                            await exports_db.consents(connection, user_id))
            for file_name, query in exports_db.SECTIONS:
                await on_thread(archive.begin_list, file_name)
                async for page in exports_db.section_pages(connection, query, user_id, PAGE_ROWS):
                    await on_thread(archive.write_items, page)
                await on_thread(archive.end_list)
        if user.avatar and user.avatar.startswith(AVATAR_URL_PREFIX):
            avatar = self.config.media_dir / "avatars" / Path(user.avatar).name
            await on_thread(archive.add_file, avatar, "avatar" + avatar.suffix)

    # --- scheduled jobs ----------------------------------------------------------------------

    async def fail_stale(self) -> dict[str, Any]:
        """Pending exports older than SF_EXPORT_STALE_MINUTES marked failed (a node died while
        building them)."""
        ids = await exports_db.fail_stale(self.db, self.config.export_stale_minutes,
                                          self.config.export_ttl_hours)
        return {"failed": len(ids)}

    async def delete_expired(self) -> dict[str, Any]:
        """Expired exports' files and rows deleted, and stray files no row names (partial
        archives of a node that died) older than SF_EXPORT_STALE_MINUTES removed."""
        expired = await exports_db.expired(self.db)
        loop = asyncio.get_running_loop()
        files = [self.dir / export.file for export in expired if export.file]
        await loop.run_in_executor(self.executor, _unlink_all, files)
        deleted = await exports_db.delete(self.db, [export.id for export in expired]) \
            if expired else 0
        known = await exports_db.files_of(self.db)
        strays = await loop.run_in_executor(
            self.executor, _remove_strays, self.dir, known,
            time.time() - 60 * self.config.export_stale_minutes)
        return {"deleted": deleted, "stray_files_removed": strays}

    async def delete_for_user(self, user_id: int) -> int:
        """Delete every export of the user, archives included (erasure of the account); how
        many. A build of theirs still running finds its row gone and removes its file."""
        files = await exports_db.delete_of_user(self.db, user_id)
        await asyncio.get_running_loop().run_in_executor(
            self.executor, _unlink_all, [self.dir / name for name in files])
        return len(files)

    async def stop(self) -> None:
        """Cancel the builds in progress (their rows are marked failed) and end the thread."""
        for task in list(self._builds):
            task.cancel()
        await asyncio.gather(*self._builds, return_exceptions=True)
        self.executor.shutdown(wait=False)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        if _FILE_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)


def _remove_strays(directory: Path, known: set[str], older_than: float) -> int:
    """Archives and partial archives in `directory` that no export names, older than
    `older_than` (epoch seconds; younger ones may be a build in progress); how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.iterdir():
        if path.name in known or not (_FILE_NAME.fullmatch(path.name)
                                      or (path.name.startswith(".") and path.name.endswith(".part"))):
            continue
        try:
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
