"""A restored backup does not resurrect an erased person (security.md#restore-resurrects-erased):
`sf restore`, run as a real process with pg_dump/pg_restore, applies again every erasure step
made since the backup, from the live database's ledger and, when that database is lost, from
the ledger file beside the backups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from sf.config import Config
from tests.helpers import go_live, main_and_empty_databases
from tests.test_backup import without_password

PASSWORD = "password123"


@pytest.fixture(scope="module")
def databases(base_config: Config) -> Iterator[dict[str, str]]:
    yield from main_and_empty_databases(base_config.database_url, "sf_erasure")


@pytest.fixture
def config(base_config: Config, databases: dict[str, str], tmp_path: Path) -> Config:
    return base_config.replace(database_url=databases["main"], backup_dir=tmp_path / "backups")


def run_sf(config: Config, *args: str, database_url: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    """This checkout's `sf <args>` as a real process, configured through its environment."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SF_")}
    environ.update(SF_DATABASE_URL=without_password(database_url or config.database_url),
                   SF_REDIS_URL=without_password(config.redis_url),
                   SF_BACKUP_DIR=str(config.backup_dir), SF_MEDIA_DIR=str(config.media_dir),
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "sf.app", *args], env=environ,
                          capture_output=True, text=True, timeout=120)


async def login_status(api, username: str) -> int:
    response = await api.post("/api/auth/login", {"username": username, "password": PASSWORD})
    return response.status  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=240)
async def test_restore_applies_the_erasures_made_since_the_backup(api, services, config,
                                                                    databases):
    alice = await api.register("alice")  # erased after the backup
    bob = await api.register("bob")  # deletes their account after the backup
    carol = await api.register("carol")
    dave = await api.register("dave")  # deleted before the backup, restored after it
    for fan, star in ((carol, "alice"), (carol, "bob"), (alice, "carol")):
        assert (await api.post(f"/api/users/{star}/follow",
                               token=fan["access_token"])).status == 204
    await go_live(api, services, bob)
    assert (await api.put("/api/users/profile", {"bio": "alice's secret"},
                          token=alice["access_token"])).status == 200
    assert (await api.request("DELETE", "/api/users/profile", {"password": PASSWORD},
                              token=dave["access_token"])).status == 202

    made = run_sf(config, "backup")
    assert made.returncode == 0, made.stderr
    dump = json.loads(made.stdout)["backup"]

    erin = await api.register("erin")  # registered after the backup, then deleted
    assert (await api.request("DELETE", "/api/users/profile", {"password": PASSWORD},
                              token=erin["access_token"])).status == 202
    for tokens in (alice, bob):
        assert (await api.request("DELETE", "/api/users/profile", {"password": PASSWORD},
                                  token=tokens["access_token"])).status == 202
    await services.db.execute("UPDATE users SET erase_after = now() WHERE username = 'alice'")
    assert await services.erasure.purge_due() == 1
    restored_dave = await api.post("/api/auth/login", {"username": "dave", "password": PASSWORD,
                                                       "restore": True})
    assert restored_dave.status == 200

    async def check_the_erasures_hold() -> None:
        alice_row = await services.db.fetchrow(
            "SELECT email_ciphertext, bio, erased_at, deleted_at FROM users WHERE id = $1",
            alice["user"]["id"])
        assert alice_row["erased_at"] is not None and alice_row["bio"] == ""
        assert alice_row["email_ciphertext"] is None
        bob_row = await services.db.fetchrow(
            "SELECT deleted_at, erased_at, is_live FROM users u"
            " LEFT JOIN streams s ON s.user_id = u.id WHERE u.id = $1", bob["user"]["id"])
        assert bob_row["deleted_at"] is not None and bob_row["erased_at"] is None
        assert bob_row["is_live"] is False
        assert await services.db.fetchval(
            "SELECT count(*) FROM stream_keys WHERE user_id = ANY($1::bigint[])",
            [alice["user"]["id"], bob["user"]["id"]]) == 0
        for name in ("alice", "bob"):
            assert (await api.get(f"/api/users/{name}")).status == 404
        assert await login_status(api, "alice") == 401
        assert await login_status(api, "bob") == 403  # still within its grace period
        assert await login_status(api, "dave") == 200  # the restore after the backup holds
        assert (await api.get("/api/users/dave")).status == 200
        assert (await api.get("/api/users/carol/following")).json["data"] == []
        assert (await api.get("/api/users/carol")).json["followers_count"] == 0
        assert await services.db.fetchval(
            "SELECT count(*) FROM users u WHERE followers_count <>"
            " (SELECT count(*) FROM follows f WHERE f.following_id = u.id)") == 0
        events = [(r["user_id"], r["event"]) for r in await services.db.fetch(
            "SELECT user_id, event FROM erasure_ledger WHERE user_id = ANY($1::bigint[])"
            " ORDER BY created_at, id", [u["user"]["id"] for u in (alice, bob, dave)])]
        assert events == [(dave["user"]["id"], "requested"), (alice["user"]["id"], "requested"),
                          (bob["user"]["id"], "requested"), (alice["user"]["id"], "erased"),
                          (dave["user"]["id"], "restored")]

    await check_the_erasures_hold()
    restored = run_sf(config, "restore", dump, "--force")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["erasures_replayed"] == 3
    await check_the_erasures_hold()
    frank = await api.register("frank")

    # The database lost, restored onto a new one: the ledger file alone is enough.
    rebuilt = run_sf(config, "restore", dump, database_url=databases["empty"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["erasures_replayed"] == 3
    for user, expected in ((alice, "erased"), (bob, "deleted"), (dave, "public")):
        row = await _row(databases["empty"], user["user"]["id"])
        state = ("erased" if row["erased_at"] else "deleted" if row["deleted_at"] else "public")
        assert state == expected, (user["user"]["username"], row)
        if expected == "erased":
            assert row["email_ciphertext"] is None and row["bio"] == ""

    # Ids handed out after a backup are handed out again after restoring it: the entry of a
    # deleted account never touches the newer account that got its id.
    assert erin["user"]["id"] == frank["user"]["id"]
    newer = run_sf(config, "backup")
    assert newer.returncode == 0, newer.stderr
    again = run_sf(config, "restore", json.loads(newer.stdout)["backup"], "--force")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["erasures_replayed"] == 0
    assert await login_status(api, "frank") == 200
    assert (await api.get("/api/users/frank")).status == 200
    await check_the_erasures_hold()


async def _row(url: str, user_id: int):
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    finally:
        await connection.close()
