"""Erasure: `DELETE /api/users/profile` hides the account at once everywhere (tokens, tickets,
stream key, live stream, follows with exact counts, invites, every public answer and cached
page), `"restore": true` on login cancels it within the grace period, and `purge_due` then
destroys the personal data, keeps the username reserved, frees it later, and records each
step in the ledger (with no personal data)."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import tornado.httpclient
import tornado.websocket
from PIL import Image

from sf.errors import Forbidden
from sf.services.erasure import ledger_file_of, read_ledger_file
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=60)
PASSWORD = "password123"


@pytest.fixture
def config(base_config, tmp_path):
    """The ledger file goes beside this test's own backups, not the machine's."""
    return base_config.replace(backup_dir=tmp_path / "backups")


async def delete_account(api, tokens, password=PASSWORD):
    return await api.request("DELETE", "/api/users/profile", {"password": password},
                             token=tokens["access_token"])


async def viewer_socket(base_url: str, stream_id: int, query: str = ""):
    url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/viewers{query}"
    return await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url))


async def next_message(socket, what: str, timeout: float = 10) -> dict:
    """The next JSON message of type `what` (viewer counts and such in between are skipped)."""
    async def read() -> dict:
        while True:
            raw = await socket.read_message()
            assert raw is not None, "the socket closed"
            message = json.loads(raw)
            if message.get("type") == what:
                return message
    return await asyncio.wait_for(read(), timeout)


async def test_deleting_needs_the_right_password_and_answers_when_erasure_falls_due(api, services):
    alice = await api.register("alice")
    assert (await api.request("DELETE", "/api/users/profile", {"password": PASSWORD})).status == 401
    wrong = await delete_account(api, alice, "not-the-password")
    assert wrong.status == 422 and wrong.json["error"]["fields"] == {"password": ["is not correct"]}
    assert (await api.get("/api/users/alice")).status == 200  # nothing happened
    missing = await api.request("DELETE", "/api/users/profile", {},
                                token=alice["access_token"])
    assert missing.status == 422 and "password" in missing.json["error"]["fields"]

    before = datetime.now(UTC)
    deleted = await delete_account(api, alice)
    assert deleted.status == 202, deleted
    erase_after = datetime.fromisoformat(deleted.json["erase_after"].replace("Z", "+00:00"))
    grace = timedelta(days=services.config.erasure_grace_days)
    assert before + grace - timedelta(seconds=5) < erase_after < before + grace + timedelta(minutes=1)


async def test_wrong_passwords_on_delete_are_throttled_like_logins(api, services):
    alice = await api.register("alice")
    statuses = [(await delete_account(api, alice, f"wrong-{n}")).status for n in range(12)]
    assert statuses[0] == 422 and 429 in statuses, statuses
    assert (await api.get("/api/users/alice")).status == 200


async def test_a_deleted_accounts_tokens_and_tickets_stop_working(api, services, base_url):
    """security.md#deleted-account-tokens"""
    alice = await api.register("alice")
    other_session = (await api.post("/api/auth/login", {"username": "alice",
                                                        "password": PASSWORD})).json
    bob = await api.register("bob")
    stream_id = await go_live(api, services, bob)
    ticket = (await api.post("/api/ws/ticket", token=alice["access_token"])).json["ticket"]
    watching = await viewer_socket(
        base_url, stream_id,
        "?ticket=" + (await api.post("/api/ws/ticket",
                                     token=other_session["access_token"])).json["ticket"])

    assert (await delete_account(api, alice)).status == 202
    for tokens in (alice, other_session):
        assert (await api.get("/api/users/profile", token=tokens["access_token"])).status == 401
        assert (await api.post("/api/ws/ticket", token=tokens["access_token"])).status == 401
        refreshed = await api.post("/api/auth/refresh-token",
                                   {"refresh_token": tokens["refresh_token"]})
        assert refreshed.status == 401, refreshed
    # A ticket taken before the deletion opens nothing.
    late = await viewer_socket(base_url, stream_id, f"?ticket={ticket}")
    assert await late.read_message() is None and late.close_code == 4401
    # A socket the account had open closes when its session is checked.
    assert await services.viewers.close_ended_sessions() == 1
    assert await asyncio.wait_for(watching.read_message(), 5) is None
    assert watching.close_code == 4401


async def test_the_live_stream_ends_and_the_stream_key_is_destroyed(api, services, base_url):
    """security.md#deleted-account-stream-key"""
    alice = await api.register("alice")
    key = (await api.get("/api/stream/key", token=alice["access_token"])).json["stream_key"]
    stream_id = await go_live(api, services, alice)
    viewer = await viewer_socket(base_url, stream_id)

    assert (await delete_account(api, alice)).status == 202
    ended = await next_message(viewer, "stream")
    assert ended["stream_id"] == stream_id and ended["is_live"] is False
    # security.md#erased-account-sockets: told it ended, then closed (an ordinary end keeps
    # viewers waiting for the streamer; nobody may see a deleted account's stream).
    async def closed() -> None:
        while await viewer.read_message() is not None:
            pass
    await asyncio.wait_for(closed(), 5)
    assert viewer.close_code == 4404
    row = await services.db.fetchrow("SELECT is_live, ended_at, stream_key FROM streams"
                                     " WHERE id = $1", stream_id)
    assert row["is_live"] is False and row["ended_at"] is not None and row["stream_key"] is None
    assert await services.db.fetchval("SELECT count(*) FROM stream_keys") == 0
    with pytest.raises(Forbidden):  # what nginx-rtmp's on_publish asks: refused
        await services.publishing.authorize_publish(key)
    viewer.close()


async def test_an_ordinary_end_keeps_its_viewers_waiting_signed_in_or_not(api, services,
                                                                           base_url):
    """The closing above is for deleted accounts only: a public stream that ends (or goes
    offline) keeps anonymous and signed-in viewers for the streamer's return (it closed every
    anonymous socket, so a media node's death dropped the viewers the survivor was to tell)."""
    alice, bob = await api.register("alice"), await api.register("bob")
    stream_id = await go_live(api, services, alice)
    ticket = (await api.post("/api/ws/ticket", token=bob["access_token"])).json["ticket"]
    sockets = [await viewer_socket(base_url, stream_id),
               await viewer_socket(base_url, stream_id, f"?ticket={ticket}")]
    await services.streams.end_stream(stream_id, alice["user"]["id"])
    for socket in sockets:
        ended = await next_message(socket, "stream")
        assert ended["is_live"] is False
    for socket in sockets:
        try:  # the next viewers count, or nothing: either way not a close
            assert await asyncio.wait_for(socket.read_message(), 2) is not None
        except TimeoutError:
            pass
        assert socket.close_code is None
        socket.close()


async def test_follows_and_invites_go_and_every_count_stays_exact(api, services):
    alice, bob, carol, dave = [await api.register(name) for name in ("alice", "bob", "carol", "dave")]
    follows = ((alice, "bob"), (alice, "carol"), (dave, "alice"), (carol, "alice"), (dave, "bob"))
    for fan, star in follows:
        assert (await api.post(f"/api/users/{star}/follow", token=fan["access_token"])).status == 204
    assert (await api.put("/api/stream/allowed-viewers/dave",
                          token=alice["access_token"])).status == 204
    assert (await api.put("/api/stream/allowed-viewers/alice",
                          token=bob["access_token"])).status == 204
    # Cached answers that are about to change.
    assert (await api.get("/api/users/bob")).json["followers_count"] == 2
    assert (await api.get("/api/users/carol")).json["followers_count"] == 1

    assert (await delete_account(api, alice)).status == 202
    assert (await api.get("/api/users/bob")).json["followers_count"] == 1
    assert (await api.get("/api/users/carol")).json["followers_count"] == 0
    assert [u["username"] for u in (await api.get("/api/users/bob/followers")).json["data"]] == ["dave"]
    assert (await api.get("/api/users/dave/following")).json["data"][0]["username"] == "bob"
    assert len((await api.get("/api/users/dave/following")).json["data"]) == 1
    assert (await api.get("/api/users/carol/following")).json["data"] == []
    invited = await api.get("/api/stream/allowed-viewers", token=bob["access_token"])
    assert invited.json["data"] == []
    assert await services.db.fetchval(
        "SELECT count(*) FROM follows f JOIN users u ON u.id IN (f.follower_id, f.following_id)"
        " WHERE u.username = 'alice'") == 0
    assert await services.db.fetchval("SELECT count(*) FROM allowed_viewers") == 0
    # Every stored count equals the rows it counts.
    assert await services.db.fetchval(
        "SELECT count(*) FROM users u WHERE followers_count <>"
        " (SELECT count(*) FROM follows f WHERE f.following_id = u.id)") == 0
    # Following a deleted account, or inviting it, finds nobody.
    assert (await api.post("/api/users/alice/follow", token=dave["access_token"])).status == 404
    assert (await api.put("/api/stream/allowed-viewers/alice",
                          token=dave["access_token"])).status == 404


async def test_no_trace_of_a_deleted_account_in_any_public_answer(api, services):
    """security.md#deleted-account-no-trace"""
    alice = await api.register("alice")
    viewer = await api.register("victor")
    assert (await api.put("/api/users/profile", {"bio": "alice's bio"},
                          token=alice["access_token"])).status == 200
    past = await api.post("/api/streams", {"title": "alice past", "category_id": 1},
                          token=alice["access_token"])
    past_id = past.json["id"]
    await services.db.execute("UPDATE streams SET started_at = now() - interval '1 hour',"
                              " ended_at = now() WHERE id = $1", past_id)
    live_id = await go_live(api, services, alice, title="alice live", category_id=1)
    reads = ["/api/users/alice", "/api/users/alice/streams", "/api/users/alice/statistics",
             "/api/users/alice/followers", "/api/users/alice/following",
             f"/api/streams/{live_id}", f"/api/streams/{past_id}",
             f"/api/streams/{live_id}/statistics", f"/api/streams/{past_id}/statistics"]
    lists = ["/api/categories/1/streams", "/api/streams", "/api/streams?is_live=false",
             "/api/streams?q=alice", "/api/streams?is_live=false&q=alice",
             "/api/categories/1/streams?is_live=false", "/api/categories"]
    for token in (None, viewer["access_token"]):  # fill the caches, anonymous and signed in
        for path in reads + lists:
            assert (await api.get(path, token=token)).status == 200, path
        assert b"alice" in (await api.get("/api/streams?q=alice", token=token)).body

    assert (await delete_account(api, alice)).status == 202
    for token in (None, viewer["access_token"]):
        for path in reads:
            assert (await api.get(path, token=token)).status == 404, path
        for path in lists:
            answer = await api.get(path, token=token)
            assert answer.status == 200, path
            assert b"alice" not in answer.body, (path, answer.body)
            if "streams" in path:
                assert {s["id"] for s in answer.json["data"]}.isdisjoint({live_id, past_id})


async def test_login_during_the_grace_period_says_so_and_restore_brings_the_account_back(
        api, services):
    alice = await api.register("alice")
    await api.register("bob")
    old_key = (await api.get("/api/stream/key", token=alice["access_token"])).json["stream_key"]
    assert (await api.post("/api/users/bob/follow", token=alice["access_token"])).status == 204
    assert (await delete_account(api, alice)).status == 202

    wrong = await api.post("/api/auth/login", {"username": "alice", "password": "nope-nope"})
    assert wrong.status == 401  # the wrong password learns nothing of the deletion
    refused = await api.post("/api/auth/login", {"username": "alice", "password": PASSWORD})
    assert refused.status == 403 and "restore" in refused.json["error"]["message"]
    by_mail = await api.post("/api/auth/login", {"email": "alice@example.com",
                                                 "password": PASSWORD})
    assert by_mail.status == 403
    assert (await api.get("/api/users/alice")).status == 404  # still hidden
    taken = await api.post("/api/auth/register",
                           await api.registration("alice", PASSWORD, "x@example.com"))
    assert taken.status == 409

    restored = await api.post("/api/auth/login", {"username": "alice", "password": PASSWORD,
                                                  "restore": True})
    assert restored.status == 200, restored
    token = restored.json["access_token"]
    assert (await api.get("/api/users/alice")).status == 200
    new_key = (await api.get("/api/stream/key", token=token)).json["stream_key"]
    assert new_key != old_key
    with pytest.raises(Forbidden):
        await services.publishing.authorize_publish(old_key)
    assert (await services.publishing.authorize_publish(new_key)).username == "alice"
    assert (await api.get("/api/users/bob")).json["followers_count"] == 0  # not restored
    assert await services.db.fetchval("SELECT deleted_at FROM users WHERE username = 'alice'") is None
    events = [e.event for e in read_ledger_file(ledger_file_of(services.config))]
    assert events == ["requested", "restored"]
    # A restore flag on a live account changes nothing.
    again = await api.post("/api/auth/login", {"username": "bob", "password": PASSWORD,
                                               "restore": True})
    assert again.status == 200
    assert (await api.post("/api/auth/login", {"username": "bob", "password": PASSWORD,
                                               "restore": "yes"})).status == 422


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


async def test_purge_destroys_personal_data_and_keeps_the_name_reserved_then_frees_it(
        api, services):
    config = services.config
    alice = await api.register("alice")
    token = alice["access_token"]
    user_id = alice["user"]["id"]
    avatar = await api.request("PUT", "/api/users/profile/avatar", body=png(),
                               headers={"Content-Type": "image/png"}, token=token)
    assert avatar.status == 200, avatar
    avatar_file = config.media_dir / "avatars" / avatar.json["avatar"].rsplit("/", 1)[1]
    assert avatar_file.is_file()
    assert (await api.put("/api/users/profile", {"bio": "call me at 555-0100"},
                          token=token)).status == 200
    stream_id = await go_live(api, services, alice, title="alice at home in Springfield",
                              description="my street")
    await services.db.execute("UPDATE streams SET publish_range = '203.0.113.0/24',"
                              " thumbnail = '/media/thumbnails/x.jpg' WHERE id = $1", stream_id)
    thumbnail = config.media_dir / "thumbnails" / "x.jpg"
    thumbnail.parent.mkdir(parents=True, exist_ok=True)
    thumbnail.write_bytes(b"a face")
    await services.db.execute(
        "INSERT INTO login_records (user_id, session_id, kind, ip, user_agent)"
        " VALUES ($1, 's1', 'login', '198.51.100.7', 'Firefox')", user_id)
    export = config.media_dir / "exports" / f"{user_id}-export.zip"
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_bytes(b"PK")
    await services.db.execute(
        "INSERT INTO exports (user_id, status, file) VALUES ($1, 'ready', $2)", user_id,
        export.name)
    assert await services.statistics.sample() == 1
    bob = await api.register("bob")
    assert (await services.erasure.purge_due()) == 0  # nobody is due

    assert (await delete_account(api, alice)).status == 202
    assert (await services.erasure.purge_due()) == 0  # within the grace period: kept
    assert avatar_file.is_file()
    await services.db.execute(
        "UPDATE users SET erase_after = now() - interval '1 second' WHERE id = $1", user_id)
    assert (await services.erasure.purge_due()) == 1
    assert (await services.erasure.purge_due()) == 0  # done once

    row = await services.db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    assert (row["email_key_id"], row["email_ciphertext"], row["email_digest"]) == \
        (None, None, None)
    assert not row["email_verified"]
    assert await services.db.fetchval(
        "SELECT count(*) FROM consents WHERE user_id = $1", user_id) == 0
    assert await services.db.fetchval(
        "SELECT count(*) FROM mail_tokens WHERE user_id = $1", user_id) == 0
    assert row["bio"] == "" and row["avatar"] is None and row["erased_at"] is not None
    assert row["username"] == "alice"  # reserved
    assert not avatar_file.exists() and not thumbnail.exists() and not export.exists()
    assert await services.db.fetchval(
        "SELECT count(*) FROM login_records WHERE user_id = $1", user_id) == 0
    assert await services.db.fetchval(
        "SELECT count(*) FROM exports WHERE user_id = $1", user_id) == 0
    assert await services.db.fetchval(
        "SELECT count(*) FROM stream_settings WHERE user_id = $1", user_id) == 0
    stream = await services.db.fetchrow("SELECT * FROM streams WHERE id = $1", stream_id)
    assert stream["title"] == f"Stream {stream_id}" and stream["description"] == ""
    assert stream["publish_range"] is None and stream["thumbnail"] is None
    # The statistics stay, for the platform's totals (anonymised with the stream).
    assert await services.db.fetchval(
        "SELECT count(*) FROM stream_statistics WHERE stream_id = $1", stream_id) == 1
    everything = await services.db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM users WHERE id = $1) t", user_id)
    everything += await services.db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM streams t WHERE user_id = $1", user_id)
    for personal in ("alice@example.com", "555-0100", "Springfield", "203.0.113", "street"):
        assert personal not in everything
    # The old password opens nothing; the name cannot be taken while reserved.
    login = await api.post("/api/auth/login", {"username": "alice", "password": PASSWORD,
                                               "restore": True})
    assert login.status == 401
    taken = await api.post("/api/auth/register",
                           await api.registration("Alice", PASSWORD, "new@example.com"))
    assert taken.status == 409
    # Its address is free for a new account.
    assert (await api.post("/api/auth/register", await api.registration(
        "alice2", PASSWORD, "alice@example.com"))).status == 201

    # After the reserve, the name is freed.
    await services.db.execute(
        "UPDATE users SET deleted_at = now() - make_interval(days => $2)"
        " , erase_after = now() - make_interval(days => $2) WHERE id = $1",
        user_id, int(config.erased_username_reserve_days) + 1)
    assert (await services.erasure.purge_due()) == 0
    assert await services.db.fetchval(
        "SELECT username FROM users WHERE id = $1", user_id) == f"erased-{user_id}"
    assert (await api.post("/api/auth/register", await api.registration(
        "alice", PASSWORD, "another@example.com"))).status == 201
    assert (await api.get("/api/users/bob")).status == 200 and bob

    # The ledger: what and when, never who beyond the internal id.
    rows = await services.db.fetch(
        "SELECT user_id, event, categories FROM erasure_ledger ORDER BY id")
    assert [(r["user_id"], r["event"]) for r in rows] == [
        (user_id, "requested"), (user_id, "erased"), (user_id, "name_released")]
    assert {"email", "avatar", "login_records", "exports", "ip_addresses",
            "consents"} <= set(rows[1]["categories"])
    ledger_text = ledger_file_of(config).read_text()
    assert [json.loads(line)["event"] for line in ledger_text.splitlines()] == [
        "requested", "erased", "name_released"]
    table_text = await services.db.fetchval("SELECT string_agg(t::text, ' ') FROM erasure_ledger t")
    for personal in ("alice", "example.com", "555-0100"):
        assert personal not in ledger_text and personal not in table_text


async def test_an_unwritable_ledger_file_does_not_fail_the_deletion(api, services, caplog):
    services.config.backup_dir.parent.mkdir(parents=True, exist_ok=True)
    services.config.backup_dir.write_text("not a directory")
    alice = await api.register("alice")
    assert (await delete_account(api, alice)).status == 202
    assert await services.db.fetchval("SELECT count(*) FROM erasure_ledger") == 1
    assert any(record.getMessage().startswith("erasure ledger file")
               and record.levelname == "ERROR" for record in caplog.records)
