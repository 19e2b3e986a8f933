"""The migration runner and the constraints of the first migration."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from sf.db.migrate import drop_database, migrate, migration_files, recreate_database


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
            assert columns["users"] >= {"id", "username", "email", "password_hash", "avatar",
                                        "bio", "followers_count", "created_at", "updated_at"}
            assert columns["streams"] >= {
                "id", "user_id", "title", "description", "thumbnail", "stream_key",
                "category_id", "is_live", "viewers_count", "is_private", "started_at",
                "ended_at", "created_at", "updated_at"}
            assert columns["categories"] >= {"id", "name", "description", "thumbnail",
                                             "viewers_count", "created_at", "updated_at"}
            assert columns["follows"] >= {"id", "follower_id", "following_id", "created_at"}
            insert = "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x') RETURNING id"
            a = await db.fetchval(insert, "Alice", "a@example.com")
            b = await db.fetchval(insert, "bob", "b@example.com")
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.fetchval(insert, "ALICE", "other@example.com")
            with pytest.raises(asyncpg.UniqueViolationError):
                await db.fetchval(insert, "carol", "A@EXAMPLE.COM")
            with pytest.raises(asyncpg.CheckViolationError):
                await db.fetchval(insert, "bad name", "c@example.com")
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
