"""The migration runner and the constraints of the first migration."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from sf.config import new_encryption_key_spec
from sf.db import migrate as migrate_module
from sf.db import users as users_db
from sf.db.migrate import (
    MigrationError,
    drop_database,
    migrate,
    migration_files,
    recreate_database,
)
from sf.errors import Conflict
from sf.security import EmailCipher


@pytest.fixture
def fresh_database(base_config):
    name = f"sf_mig_{uuid.uuid4().hex[:8]}"
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(
        recreate_database(base_config.database_url, name, apply_migrations=False))
    yield url, loop
    loop.run_until_complete(drop_database(base_config.database_url, name))
    loop.close()


def test_concurrent_migrations_apply_each_file_once(fresh_database):
    url, loop = fresh_database

    async def run():
        results = await asyncio.gather(*[migrate(url) for _ in range(4)])
        connection = await asyncpg.connect(url)
        rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
        await connection.close()
        return results, [row["version"] for row in rows]

    results, versions = loop.run_until_complete(run())
    expected = [version for version, _, _ in migration_files()]
    assert versions == expected
    assert sorted(len(r) for r in results) == [0, 0, 0, len(expected)]
    assert loop.run_until_complete(migrate(url)) == []


def test_schema_constraints(fresh_database):
    url, loop = fresh_database

    async def run():
        await migrate(url)
        db = await asyncpg.connect(url)
        try:
            columns = {
                table: {row["column_name"] for row in await db.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                    table)}
                for table in ("users", "streams", "categories", "follows")}
            assert columns["users"] >= {"id", "username", "email_key_id", "email_ciphertext",
                                        "email_digest", "password_hash", "avatar", "bio",
                                        "followers_count", "created_at", "updated_at"}
            assert "email" not in columns["users"]  # no address in clear (security.md#email-at-rest)
            assert columns["streams"] >= {
                "id", "user_id", "title", "description", "thumbnail", "stream_key",
                "category_id", "is_live", "viewers_count", "is_private", "started_at",
                "ended_at", "created_at", "updated_at"}
            assert columns["categories"] >= {"id", "name", "description", "thumbnail",
                                             "viewers_count", "created_at", "updated_at"}
            assert columns["follows"] >= {"id", "follower_id", "following_id", "created_at"}
            cipher = EmailCipher(new_encryption_key_spec("k1"), "lookup-secret-of-the-test")
            insert = ("INSERT INTO users (username, email_key_id, email_ciphertext, email_digest,"
                      " password_hash) VALUES ($1, 'k1', '\\x00', $2, 'x') RETURNING id")
            a = await db.fetchval(insert, "Alice", cipher.digest("a@example.com"))
            b = await db.fetchval(insert, "bob", cipher.digest("b@example.com"))
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.fetchval(insert, "ALICE", cipher.digest("other@example.com"))
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.fetchval(insert, "carol", cipher.digest("A@EXAMPLE.COM"))
            with pytest.raises(asyncpg.CheckViolationError):
                await db.fetchval(insert, "bad name", cipher.digest("c@example.com"))
            await db.execute("INSERT INTO follows (follower_id, following_id) VALUES ($1, $2)", a, b)
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.execute("INSERT INTO follows (follower_id, following_id) VALUES ($1, $2)", a, b)
            with pytest.raises(asyncpg.CheckViolationError):
                await db.execute("INSERT INTO follows (follower_id, following_id) VALUES ($1, $1)", a)
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await db.execute("INSERT INTO follows (follower_id, following_id) VALUES ($1, 999)", a)
            stream = "INSERT INTO streams (user_id, title, is_live, started_at) VALUES ($1, 't', true, now())"
            await db.execute(stream, a)
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.execute(stream, a)  # one live stream per user
        finally:
            await db.close()

    loop.run_until_complete(run())


# Accounts as they were before migration 012 (clear-text addresses, mixed case).
OLD_ACCOUNTS = [(f"user{index}", f"Person.{index}@Example.COM") for index in range(7)]


def test_clear_text_addresses_are_sealed_by_the_migration(fresh_database, tmp_path, monkeypatch):
    """security.md#email-at-rest, on a database with data: accounts made in the pre-012 shape
    (addresses in clear), then the migration, interrupted once part way and run again. After
    it no address is left in clear anywhere in the table, each opens to what it was, login by
    address finds its account whatever the case, and uniqueness still holds case-insensitively."""
    url, loop = fresh_database
    before = tmp_path / "sql"
    before.mkdir()
    for version, _, path in migration_files():
        if version < 12:
            (before / path.name).write_text(path.read_text())
    ring = new_encryption_key_spec("k1")
    cipher = EmailCipher(ring, "lookup-secret-of-the-test")
    monkeypatch.setattr(migrate_module, "EMAIL_BATCH", 3)  # several batches for 7 rows

    class FailingOnce(EmailCipher):
        """Stops the data step in its second batch, as a crash would."""

        calls = 0

        def encrypt(self, email, user_id, purpose="email"):
            FailingOnce.calls += 1
            if FailingOnce.calls == 5:
                raise RuntimeError("interrupted")
            return super().encrypt(email, user_id, purpose)

    async def run():
        await migrate(url, before)
        db = await asyncpg.connect(url)
        try:
            ids = {}
            for username, email in OLD_ACCOUNTS:
                ids[username] = await db.fetchval(
                    "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x')"
                    " RETURNING id", username, email)
            # Without the key ring the step refuses, and nothing is lost.
            with pytest.raises(MigrationError, match="key ring"):
                await migrate(url)
            assert await db.fetchval("SELECT count(*) FROM users WHERE email IS NOT NULL") == 7
            interrupted = FailingOnce(ring, "lookup-secret-of-the-test")
            with pytest.raises(RuntimeError, match="interrupted"):
                await migrate(url, email_cipher=interrupted)
            assert await db.fetchval("SELECT count(*) FROM users WHERE email IS NULL") == 3
            # The data step finishes, then the migrations after 012 (stopped behind it) apply.
            later = [name for version, name, _ in migration_files() if version > 12]
            assert await migrate(url, email_cipher=cipher) == later
            assert await migrate(url, email_cipher=cipher) == []  # nothing left to do
            columns = {row["column_name"] for row in await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'")}
            assert "email" not in columns
            table = (await db.fetchval("SELECT string_agg(u::text, ' ') FROM users u")).lower()
            for _username, email in OLD_ACCOUNTS:
                assert email.lower() not in table
                assert email.split("@")[0].lower() not in table
            for username, email in OLD_ACCOUNTS:
                found = await users_db.find_user_for_login(db, cipher, email.upper())
                assert found is not None and found.id == ids[username]
                assert found.email == email  # opens to the address as it was given
                assert (await users_db.get_user(db, ids[username], cipher)).email == email
            with pytest.raises(Conflict):
                await users_db.create_user(db, cipher, "newcomer", "person.3@example.com", "x")
            created = await users_db.create_user(db, cipher, "newcomer", "new@example.com", "x")
            assert created.email == "new@example.com"
        finally:
            await db.close()

    loop.run_until_complete(run())
