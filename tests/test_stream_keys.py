"""Stream keys: format, encryption at rest, reset, rotation, lookup, never leaking."""

from __future__ import annotations

import re

import pytest

from sf.config import new_encryption_key_spec
from sf.db import stream_keys as keys_db
from sf.errors import Conflict, Forbidden
from sf.security import StreamKeyCipher

pytestmark = pytest.mark.gen_test(timeout=60)
KEY_FORMAT = re.compile(r"^live_(\d+)_([A-Za-z0-9_\-]{43,})$")


async def test_every_account_has_a_key_shown_only_to_its_owner(api, services):
    tokens = await api.register("alice")
    response = await api.get("/api/stream/key", token=tokens["access_token"])
    assert response.status == 200
    body = response.json
    match = KEY_FORMAT.match(body["stream_key"])
    assert match and int(match.group(1)) == tokens["user"]["id"]
    assert body["rtmp_url"] == f"rtmp://127.0.0.1:{services.config.rtmp_port}/live"
    assert body["updated_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"
    assert (await api.get("/api/stream/key")).status == 401


async def test_key_is_encrypted_at_rest_with_a_digest(api, services):
    tokens = await api.register("bob")
    key = (await api.get("/api/stream/key", token=tokens["access_token"])).json["stream_key"]
    row = await services.db.fetchrow("SELECT * FROM stream_keys WHERE user_id = $1",
                                     tokens["user"]["id"])
    assert key.encode() not in bytes(row["ciphertext"])
    assert row["key_id"] == services.cipher.current_key_id
    assert bytes(row["digest"]) == services.cipher.digest(key)
    dump = await services.db.fetchval("SELECT string_agg(t::text, ' ') FROM stream_keys t")
    assert key not in dump


async def test_reset_replaces_the_key_and_the_old_one_stops_working(api, services):
    tokens = await api.register("carol")
    old = (await api.get("/api/stream/key", token=tokens["access_token"])).json
    assert (await services.publishing.authorize_publish(old["stream_key"])).is_live
    await services.streams.end_stream(
        await services.db.fetchval("SELECT id FROM streams WHERE is_live"))
    reset = await api.post("/api/stream/key/reset", token=tokens["access_token"])
    assert reset.status == 200
    new = reset.json
    assert new["stream_key"] != old["stream_key"] and KEY_FORMAT.match(new["stream_key"])
    assert new["updated_at"] >= old["updated_at"]
    with pytest.raises(Forbidden):
        await services.publishing.authorize_publish(old["stream_key"])
    stream = await services.publishing.authorize_publish(new["stream_key"])
    assert stream.user_id == tokens["user"]["id"]


@pytest.fixture
def config(base_config):
    return base_config.replace(rate_limit_key_reset=3)


async def test_key_reset_is_rate_limited(api):
    token = (await api.register("dave"))["access_token"]
    statuses = [(await api.post("/api/stream/key/reset", token=token)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_authorize_publish_rules(api, services):
    tokens = await api.register("erin")
    key = (await api.get("/api/stream/key", token=tokens["access_token"])).json["stream_key"]
    for wrong in ("", "live_1_nope", key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x",
                  "x" * 5000):
        with pytest.raises(Forbidden):
            await services.publishing.authorize_publish(wrong)
    stream = await services.publishing.authorize_publish(key)
    assert stream.is_live and stream.started_at is not None
    assert stream.title == "erin's stream"  # no prepared stream, no default title
    with pytest.raises(Conflict):  # one live stream per user
        await services.publishing.authorize_publish(key)
    sealed = await services.db.fetchval("SELECT stream_key FROM streams WHERE id = $1", stream.id)
    assert sealed is not None and key.encode() not in bytes(sealed)


async def test_publish_uses_the_prepared_stream_or_the_defaults(api, services):
    tokens = await api.register("frank")
    token = tokens["access_token"]
    key = (await api.get("/api/stream/key", token=token)).json["stream_key"]
    settings = await api.put("/api/stream/settings", {
        "title": "Default title", "category_id": 2, "is_private": True}, token=token)
    assert settings.status == 200 and settings.json["category_id"] == 2
    first = await services.publishing.authorize_publish(key)
    assert (first.title, first.category_id, first.is_private) == ("Default title", 2, True)
    await services.streams.end_stream(first.id)
    prepared = await api.post("/api/streams", {"title": "Prepared one"}, token=token)
    second = await services.publishing.authorize_publish(key)
    assert second.id == prepared.json["id"] and second.title == "Prepared one"


async def test_settings_validation(api):
    token = (await api.register("gina"))["access_token"]
    got = await api.get("/api/stream/settings", token=token)
    assert got.status == 200 and got.json["title"] == "" and got.json["category_id"] is None
    for body, field in (({"category_id": 9999}, "category_id"), ({"title": "x" * 141}, "title"),
                        ({"is_private": "maybe"}, "is_private"), ({"stream_key": "x"}, "stream_key"),
                        ({"category_id": -1}, "category_id")):
        response = await api.put("/api/stream/settings", body, token=token)
        assert response.status == 422 and field in response.json["error"]["fields"], body
    cleared = await api.put("/api/stream/settings", {"category_id": None}, token=token)
    assert cleared.status == 200 and cleared.json["category_id"] is None


async def test_encryption_key_rotation_reencrypts_every_row(api, services):
    users = [await api.register(f"rot{i}") for i in range(3)]
    keys = [(await api.get("/api/stream/key", token=u["access_token"])).json["stream_key"]
            for u in users]
    old_spec = services.config.stream_key_encryption_keys
    new_spec = new_encryption_key_spec("k9")
    lookup = services.config.stream_key_lookup_secret
    rotated = StreamKeyCipher(new_spec + "," + old_spec, lookup)
    assert await keys_db.rotate_encryption(services.db, rotated) == 3
    assert await keys_db.rotate_encryption(services.db, rotated) == 0
    ids = {row["key_id"] for row in await services.db.fetch("SELECT key_id FROM stream_keys")}
    assert ids == {"k9"}
    for user, key in zip(users, keys, strict=True):
        assert (await keys_db.get_stream_key(services.db, rotated, user["user"]["id"])).stream_key == key
        assert await keys_db.find_user_by_key(services.db, rotated, key) == user["user"]["id"]
    # Dropping the old encryption key is now safe: nothing is sealed with it any more.
    only_new = StreamKeyCipher(new_spec, lookup)
    for user, key in zip(users, keys, strict=True):
        assert (await keys_db.get_stream_key(services.db, only_new, user["user"]["id"])).stream_key == key


async def test_the_key_never_leaks(api, services, captured_logs):
    """Drive every endpoint as owner, follower and stranger; the key shows only where asked."""
    owner = await api.register("keyowner")
    fan = await api.register("keyfan")
    stranger = await api.register("stranger")
    token = owner["access_token"]
    key = (await api.get("/api/stream/key", token=token)).json["stream_key"]
    await api.post("/api/users/keyowner/follow", token=fan["access_token"])
    await api.put("/api/stream/settings", {"title": "Live now"}, token=token)
    stream = await services.publishing.authorize_publish(key)
    try:
        await services.publishing.authorize_publish(key + "-typo")
    except Forbidden:
        pass
    calls = [
        ("GET", "/api/streams"), ("GET", f"/api/streams/{stream.id}"),
        ("GET", "/api/users/keyowner"), ("GET", "/api/users/keyowner/streams"),
        ("GET", "/api/users/profile"), ("GET", "/api/stream/settings"),
        ("GET", "/api/categories"), ("GET", "/api/users/keyowner/followers"),
        ("PUT", f"/api/streams/{stream.id}"), ("GET", f"/api/streams/{stream.id}?x={key}"),
    ]
    before = len(api.transcript)
    for who in (token, fan["access_token"], stranger["access_token"], None):
        for method, path in calls:
            body = {"title": "Renamed"} if method == "PUT" else None
            await api.request(method, path, json_body=body, token=who)
    await api.post("/api/streams", {"title": key}, token=token)  # a careless streamer
    await api.put("/api/stream/settings", {"title": "t", "bogus": key}, token=token)
    await api.request("GET", f"/api/nope/{key}")
    leaked = [body for body in api.transcript[before:] if key.encode() in body]
    # Only the stream created with the key as its *title* echoes it back: user data, not a leak.
    assert all(b'"title": "' + key.encode() in body for body in leaked), leaked
    await services.streams.end_stream(stream.id)
    logs = captured_logs.read_text()
    assert key not in logs
    assert "live_[REDACTED]" in logs  # the 404 path carrying the key was logged, redacted
