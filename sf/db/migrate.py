"""Migration runner: applies sql/NNN_*.sql in order, once each, under an advisory lock.

Several nodes may start at once; the advisory lock makes the others wait and then find
nothing left to do. Each file runs in its own transaction with its bookkeeping row.

Some changes SQL cannot make (encrypting the e-mail addresses needs the key ring): a *data
step* in Python follows its file, under the same lock. Data steps are idempotent and batched
(one short transaction a batch), so an interrupted run picks up where it stopped: each runs on
every `migrate` after its file, and finds nothing left to do once done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from sf.config import PROJECT_ROOT, with_url_path
from sf.security import EmailCipher

log = logging.getLogger("sf.migrate")

MIGRATIONS_DIR = PROJECT_ROOT / "sql"
ADVISORY_LOCK_ID = 0x5F_6D_69_67  # "_mig"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
EMAIL_BATCH = 500  # rows a transaction of the e-mail encryption step


class MigrationError(RuntimeError):
    """A migration cannot go on; the message says what the operator must do."""


async def _column_exists(connection: asyncpg.Connection, table: str, column: str) -> bool:
    return bool(await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = $1 AND column_name = $2)", table, column))


async def encrypt_clear_emails(connection: asyncpg.Connection,
                               email_cipher: EmailCipher | None,
                               batch: int | None = None) -> int:
    """After 012: seal every address still in clear, a batch a transaction, then drop the
    clear-text column (and its index with it); how many addresses were sealed.

    Without the key ring it can do nothing but refuse, unless no address needs it (a new
    database): then only the column goes.
    """
    if not await _column_exists(connection, "users", "email"):
        return 0
    batch = batch or EMAIL_BATCH
    sealed = 0
    while True:
        async with connection.transaction():
            rows = await connection.fetch(
                "SELECT id, email FROM users WHERE email IS NOT NULL ORDER BY id LIMIT $1"
                " FOR UPDATE", batch)
            if not rows:
                break
            if email_cipher is None:
                raise MigrationError(
                    "migration 012 encrypts the e-mail addresses stored in clear and needs the "
                    "key ring: run `sf migrate` (it reads SF_STREAM_KEY_ENCRYPTION_KEYS and "
                    "SF_STREAM_KEY_LOOKUP_SECRET)")
            values = []
            for row in rows:
                box = email_cipher.encrypt(row["email"], row["id"])
                values.append((row["id"], box.key_id, box.ciphertext, box.digest))
            await connection.executemany(
                "UPDATE users SET email = NULL, email_key_id = $2, email_ciphertext = $3,"
                " email_digest = $4 WHERE id = $1", values)
        sealed += len(rows)
        log.info("sealed %d e-mail address(es) so far", sealed)
    async with connection.transaction():
        await connection.execute("ALTER TABLE users DROP COLUMN email")
    return sealed


DataStep = Callable[[asyncpg.Connection, EmailCipher | None], Awaitable[int]]
# Data steps by the version of the file they follow.
DATA_STEPS: dict[int, DataStep] = {12: encrypt_clear_emails}


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    """(version, name, path) of every migration, in order; rejects duplicate numbers."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} is not NNN_name.sql")
        found.append((int(match.group(1)), path.stem, path))
    versions = [version for version, _, _ in found]
    if len(versions) != len(set(versions)):
        raise ValueError("two migrations share a number")
    return found


async def recreate_database(admin_dsn: str, name: str, apply_migrations: bool = True,
                            email_cipher: EmailCipher | None = None) -> str:
    """Drop (if present) and create database `name` next to `admin_dsn`, migrate it; its URL.

    For test sessions and benchmarks, which each want a database of their own.
    """
    await drop_database(admin_dsn, name)
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = with_url_path(admin_dsn, name)
    if apply_migrations:
        await migrate(url, email_cipher=email_cipher)
    return url


async def drop_database(admin_dsn: str, name: str, attempts: int = 20) -> None:
    """Drop a database, ending its sessions. An autovacuum worker in it (the server's own
    session, which our role may not end) finishes within moments: wait for it."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        for attempt in range(attempts):
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.InsufficientPrivilegeError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await connection.close()


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR, *,
                  email_cipher: EmailCipher | None = None) -> list[str]:
    """Apply pending migrations and the data steps that follow them; return the names of the
    files applied by this call. `email_cipher` seals the addresses a data step finds in clear
    (a database without any needs none)."""
    connection = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            await connection.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
            done = {row["version"]: row["checksum"] for row in rows}
            for version, name, path in migration_files(directory):
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        log.warning("migration %s changed after it was applied", name)
                else:
                    async with connection.transaction():
                        await connection.execute(sql)
                        await connection.execute(
                            "INSERT INTO schema_migrations (version, name, checksum)"
                            " VALUES ($1, $2, $3)", version, name, checksum,
                        )
                    log.info("applied migration %s", name)
                    applied_now.append(name)
                step = DATA_STEPS.get(version)
                if step is not None:
                    await step(connection, email_cipher)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await connection.close()
    return applied_now
