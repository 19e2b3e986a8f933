"""Migration runner: applies sql/NNN_*.sql in order, once each, under an advisory lock.

Several nodes may start at once; the advisory lock makes the others wait and then find
nothing left to do. Each file runs in its own transaction with its bookkeeping row.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

import asyncpg

from sf.config import PROJECT_ROOT, with_url_path

log = logging.getLogger("sf.migrate")

MIGRATIONS_DIR = PROJECT_ROOT / "sql"
ADVISORY_LOCK_ID = 0x5F_6D_69_67  # "_mig"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


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


async def recreate_database(admin_dsn: str, name: str, apply_migrations: bool = True) -> str:
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
        await migrate(url)
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


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
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
                    continue
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        version, name, checksum,
                    )
                log.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await connection.close()
    return applied_now
