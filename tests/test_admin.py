"""`sf categories ...` and `sf keys rotate`, run as the real command against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sf.config import new_encryption_key_spec
from sf.security import EmailCipher
from tests.helpers import go_live


def sf(config, *args, extra_env=None):
    env = {**os.environ, "SF_DATABASE_URL": config.database_url, "SF_REDIS_URL": config.redis_url,
           **(extra_env or {})}
    result = subprocess.run([sys.executable, "-m", "sf.app", *args], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.gen_test(timeout=120)
async def test_category_admin_commands(api, services, config):
    added = json.loads(sf(config, "categories", "add", "Board Games", "--description", "Dice"))
    assert added["name"] == "Board Games"
    listed = await api.get("/api/categories?limit=100")
    assert "Board Games" in [c["name"] for c in listed.json["data"]]
    renamed = json.loads(sf(config, "categories", "update", str(added["id"]), "--name", "Tabletop"))
    assert renamed["name"] == "Tabletop" and renamed["description"] == "Dice"
    owner = await api.register("alice")
    stream_id = await go_live(api, services, owner, category_id=added["id"])
    await api.put("/api/stream/settings", {"category_id": added["id"]}, token=owner["access_token"])
    removed = json.loads(sf(config, "categories", "remove", str(added["id"])))
    assert removed["streams_moved_to_no_category"] == 1
    stream = (await api.get(f"/api/streams/{stream_id}")).json
    assert stream["category"] is None and stream["is_live"] is True
    settings = (await api.get("/api/stream/settings", token=owner["access_token"])).json
    assert settings["category_id"] is None
    assert (await api.get(f"/api/categories/{added['id']}")).status == 404


@pytest.mark.gen_test(timeout=120)
async def test_keys_rotate_command(api, services, config):
    tokens = await api.register("bob")
    key = (await api.get("/api/stream/key", token=tokens["access_token"])).json["stream_key"]
    spec = new_encryption_key_spec("k2") + "," + config.stream_key_encryption_keys
    out = sf(config, "keys", "rotate", extra_env={"SF_STREAM_KEY_ENCRYPTION_KEYS": spec})
    # the account's address and its verification mail still queued in the outbox
    assert "re-encrypted 1 stream key(s) and 2 e-mail address(es)" in out
    assert await services.db.fetchval("SELECT key_id FROM stream_keys") == "k2"
    assert await services.db.fetchval("SELECT email_key_id FROM users") == "k2"
    assert key not in out
    # It opened everyone's address: audited.
    line = json.loads(config.audit_log_file.read_text().splitlines()[-1])
    assert (line["action"], line["account"], line["details"]) == (
        "keys_rotate", "*", {"stream_keys": 1, "emails": 2, "outcome": "ok"})
    # Under the new ring (k2 first, k1 still there to read), and under k2 alone once rotated:
    # the address opens and login by it still works.
    rotated = services.config.replace(stream_key_encryption_keys=spec.split(",")[0])
    assert EmailCipher.of(rotated).decrypt(
        "k2", await services.db.fetchval("SELECT email_ciphertext FROM users"),
        tokens["user"]["id"]) == "bob@example.com"
