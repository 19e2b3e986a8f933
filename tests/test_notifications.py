"""Go-live notifications against real PostgreSQL, Redis and SMTP: the fan-out (in-app list,
`/ws/notifications` on every open tab, e-mail with one-click unsubscribe), who is told
(followers, not muted ones, invited ones for private streams), the debounce, batches that
survive a dead worker, settings, mutes, reading, and the socket's gates."""

from __future__ import annotations

import asyncio
import json
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.client import Viewer, connect_notifications
from harness.ports import release_ports, reserve_port
from sf.app import make_app
from sf.db import notifications as notifications_db
from sf.db import streams as streams_db
from sf.services.container import Services, start_services
from tests.helpers import go_live

ORIGIN = "https://app.example.com"  # allow-listed in the test configuration


@pytest.fixture
def notifying(io_loop: Any, services: Services) -> Any:
    """The node's notification hub and fan-out worker, as `Services.start` runs them."""
    io_loop.run_sync(services.notifications.start)
    yield services.notifications
    io_loop.run_sync(services.notifications.stop)


async def follow(api: Any, user: dict[str, Any], channel: str) -> None:
    response = await api.post(f"/api/users/{channel}/follow", token=user["access_token"])
    assert response.status == 204, response


async def socket_of(api: Any, base_url: str, user: dict[str, Any]) -> Viewer:
    """An open `/ws/notifications` of `user`, once its first unread count came."""
    response = await api.post("/api/ws/ticket", token=user["access_token"])
    assert response.status == 200, response
    socket = await connect_notifications(base_url, response.json["ticket"], origin=ORIGIN)
    await socket.until(lambda s: s.of_type("unread_count") or s.closed.is_set(),
                       what="the unread count")
    return socket


async def listed(api: Any, user: dict[str, Any], query: str = "") -> dict[str, Any]:
    response = await api.get(f"/api/notifications{query}", token=user["access_token"])
    assert response.status == 200, response
    return response.json  # type: ignore[no-any-return]


async def settle(services: Services) -> None:
    """Every planned fan-out finished (the worker was woken by the go-live)."""
    for _ in range(200):
        pending = await services.db.fetchval(
            "SELECT count(*) FROM notification_fanouts WHERE status = 'pending'")
        if not pending:
            await asyncio.sleep(0.1)  # the last batch's bus message
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a fan-out did not finish")


@pytest.mark.gen_test(timeout=60)
async def test_go_live_tells_followers_in_the_list_and_on_every_open_tab(
        api, services, base_url, notifying):
    host = await api.register("host")
    alice, bob, carol, dave = [await api.register(name)
                               for name in ("alice", "bob", "carol", "dave")]
    for user in (alice, bob, carol):
        await follow(api, user, "host")
    await api.put("/api/notifications/mutes/host", token=bob["access_token"])
    response = await api.put("/api/notifications/settings",
                             {"stream.online": {"in_app": False}}, token=carol["access_token"])
    assert response.status == 200, response
    assert response.json == {"stream.online": {"in_app": False, "email": False, "push": True}}
    tabs = [await socket_of(api, base_url, alice), await socket_of(api, base_url, alice)]
    others = [await socket_of(api, base_url, user) for user in (bob, carol, dave)]
    assert tabs[0].of_type("unread_count") == [{"type": "unread_count", "count": 0}]

    await api.put("/api/stream/settings", {"title": "Speedrun <b>any%</b>"},
                  token=host["access_token"])
    stream_id = await go_live(api, services, host)
    for tab in tabs:
        await tab.until(lambda s: s.of_type("notification"), what="the notification")
    await settle(services)
    pushed = tabs[0].of_type("notification")[0]["notification"]
    assert pushed["type"] == "stream.online" and pushed["read_at"] is None
    assert pushed["data"] == {"stream_id": stream_id, "username": "host",
                              "title": "Speedrun <b>any%</b>", "thumbnail": None}
    assert tabs[1].of_type("notification")[0]["notification"] == pushed
    assert tabs[0].of_type("unread_count")[-1] == {"type": "unread_count", "count": 1}
    for socket in others:  # muted, in-app off, not following: nothing
        assert socket.of_type("notification") == []

    page = await listed(api, alice)
    assert page["unread_count"] == 1 and page["data"] == [pushed]
    for user in (bob, carol, dave, host):
        assert (await listed(api, user))["data"] == []

    # Reading on one tab sets the count on every tab (any node: through the bus).
    response = await api.post("/api/notifications/read", {"ids": [pushed["id"]]},
                              token=alice["access_token"])
    assert response.status == 204, response
    for tab in tabs:
        await tab.until(lambda s: s.of_type("unread_count")[-1]["count"] == 0,
                        what="the count after reading")
    # Reading what is read already changes no count: no frame (one came per call before).
    frames = len(tabs[0].of_type("unread_count"))
    for _ in range(3):
        assert (await api.post("/api/notifications/read-all",
                               token=alice["access_token"])).status == 204
    await asyncio.sleep(0.3)
    assert len(tabs[0].of_type("unread_count")) == frames
    page = await listed(api, alice)
    assert page["unread_count"] == 0 and page["data"][0]["read_at"].endswith("Z")
    assert (await listed(api, alice, "?unread=true"))["data"] == []


@pytest.mark.gen_test(timeout=60)
async def test_a_reconnect_or_a_new_stream_soon_after_sends_nothing_new(
        api, services, notifying):
    """security.md#notification-repeat-go-live"""
    host = await api.register("host")
    alice = await api.register("alice")
    await follow(api, alice, "host")
    stream_id = await go_live(api, services, host)
    await settle(services)
    assert (await listed(api, alice))["unread_count"] == 1

    # The encoder drops and comes back within the grace: the same stream, announced once.
    await streams_db.mark_disconnected(services.db, stream_id)
    key = (await api.get("/api/stream/key", token=host["access_token"])).json["stream_key"]
    resumed = await services.publishing.authorize_publish(key, resume_within=60)
    assert resumed.id == stream_id
    await settle(services)
    assert (await listed(api, alice))["unread_count"] == 1

    # A new stream within SF_NOTIFY_REPEAT_SECONDS: recorded as skipped, nobody told.
    await services.streams.end_stream(stream_id, host["user"]["id"])
    second = await go_live(api, services, host)
    await settle(services)
    assert second != stream_id
    assert (await listed(api, alice))["unread_count"] == 1
    assert await services.db.fetchval(
        "SELECT status FROM notification_fanouts WHERE stream_id = $1", second) == "skipped"

    # Once the last notice is older than that, a new stream is announced again.
    await services.streams.end_stream(second, host["user"]["id"])
    await services.db.execute(
        "UPDATE notification_fanouts SET created_at = now() - interval '11 minutes'")
    third = await go_live(api, services, host)
    await settle(services)
    page = await listed(api, alice)
    assert page["unread_count"] == 2 and page["data"][0]["data"]["stream_id"] == third


@pytest.mark.gen_test(timeout=60)
async def test_a_private_stream_tells_invited_followers_only(api, services, notifying):
    host = await api.register("host")
    invited, uninvited = await api.register("invited"), await api.register("uninvited")
    for user in (invited, uninvited):
        await follow(api, user, "host")
    response = await api.put("/api/stream/allowed-viewers/invited", token=host["access_token"])
    assert response.status in (201, 204), response
    await go_live(api, services, host, is_private=True)
    await settle(services)
    assert (await listed(api, invited))["unread_count"] == 1
    assert (await listed(api, uninvited))["unread_count"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_mail_goes_to_verified_opted_in_followers_with_one_click_unsubscribe(
        api, services, base_url, notifying, mailbox):
    """security.md#unsubscribe-token-forgery, security.md#unsubscribe-header-encoded"""
    host = await api.register("host")
    alice, bob, carol = [await api.register(name) for name in ("alice", "bob", "carol")]
    for user in (alice, bob, carol):
        await follow(api, user, "host")
    for user in (alice, bob):  # carol keeps the default: no mail
        response = await api.put("/api/notifications/settings", {"stream.online": {"email": True}},
                                 token=user["access_token"])
        assert response.json["stream.online"]["email"] is True
    await services.db.execute("UPDATE users SET email_verified = (username <> 'bob')")
    mailbox.clear()
    stream_id = await go_live(api, services, host)
    await settle(services)
    mail = await mailbox.wait_for("alice@example.com")
    await asyncio.sleep(0.5)
    assert mailbox.to("bob@example.com") == [] and mailbox.to("carol@example.com") == []
    assert mail.message["Subject"] == "host is live on SF"
    assert f"/watch/{stream_id}" in mail.text
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # One plain header line, as RFC 2369 and mail clients read it (not RFC 2047 encoded-words,
    # which a folded long URL became).
    header = [line for line in mail.raw.split(b"\r\n") if line.startswith(b"List-Unsubscribe:")]
    assert len(header) == 1 and header[0].startswith(b"List-Unsubscribe: <http"), mail.raw[:2000]
    assert b"=?utf-8?" not in mail.raw
    one_click = mail.message["List-Unsubscribe"].strip("<>")
    assert one_click.startswith(services.config.public_base_url + "/api/notifications/unsubscribe?token=")
    assert any("/account/unsubscribe#token=" in link for link in mail.links)

    # The mail client's one-click POST (RFC 8058), to the test server's address.
    url = urlsplit(one_click)
    response = await api.post(f"{url.path}?{url.query}", body=b"List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 204, response
    settings = await api.get("/api/notifications/settings", token=alice["access_token"])
    assert settings.json["stream.online"] == {"in_app": True, "email": False, "push": True}
    # The same token again is fine (idempotent); a forged or altered one is not.
    token = url.query.split("=", 1)[1]
    assert (await api.post("/api/notifications/unsubscribe", {"token": token})).status == 204
    user_id, type_, signature = token.split(".", 2)[0], "stream.online", token.rsplit(".", 1)[1]
    full_width = "".join(chr(ord(digit) + 0xFEE0) for digit in user_id)
    for forged in (f"{int(user_id) + 1}.{type_}.{signature}", f"{user_id}.{type_}.AAAA", "x",
                   f"{user_id}.chat.{signature}", f"0{user_id}.{type_}.{signature}",
                   f"{full_width}.{type_}.{signature}", f"+{user_id}.{type_}.{signature}"):
        response = await api.post("/api/notifications/unsubscribe", {"token": forged})
        assert response.status == 422, (forged, response)
        assert response.json["error"]["fields"] == {"token": ["is not a valid unsubscribe token"]}
    assert parseaddr(mail.message["To"])[1] == "alice@example.com"


@pytest.mark.gen_test(timeout=60)
async def test_the_socket_needs_a_ticket_the_right_origin_and_a_live_session(
        api, services, base_url, notifying):
    """security.md#notification-socket-other-user"""
    alice = await api.register("alice")
    socket = await connect_notifications(base_url, None, origin=ORIGIN)
    assert await socket.until_closed() == 4401
    socket = await connect_notifications(base_url, "made-up", origin=ORIGIN)
    assert await socket.until_closed() == 4401
    ticket = (await api.post("/api/ws/ticket", token=alice["access_token"])).json["ticket"]
    with pytest.raises(Exception) as refused:
        await connect_notifications(base_url, ticket, origin="https://evil.example")
    assert "403" in str(refused.value)

    socket = await socket_of(api, base_url, alice)
    assert socket.of_type("unread_count") == [{"type": "unread_count", "count": 0}]
    # Another user's notice never reaches it.
    bob = await api.register("bob")
    await services.notifications.tell(bob["user"]["id"], "webhook.disabled", {"webhook_id": 1})
    await services.notifications.tell(alice["user"]["id"], "webhook.disabled", {"webhook_id": 2})
    await socket.until(lambda s: s.of_type("notification"), what="alice's notice")
    notices = [m["notification"]["data"] for m in socket.of_type("notification")]
    assert notices == [{"webhook_id": 2}]
    # Logging out ends the socket too.
    response = await api.post("/api/auth/logout", token=alice["access_token"])
    assert response.status == 204, response
    assert await socket.until_closed(timeout=15) == 4401


@pytest.mark.gen_test(timeout=120)
async def test_a_fan_out_left_by_a_dead_worker_is_finished_once_by_another(
        api, services, notifying):
    host = await api.register("host")
    await services.db.execute(
        """INSERT INTO users (username, password_hash)
           SELECT 'fan_' || i, 'x' FROM generate_series(1, 250) i""")
    await services.db.execute(
        """INSERT INTO follows (follower_id, following_id)
           SELECT id, $1 FROM users WHERE username LIKE 'fan\\_%'""", host["user"]["id"])
    await services.notifications.stop()  # nobody takes it until the test says so
    config = services.config.replace(notify_fanout_batch=100)
    stream_id = await go_live(api, services, host)
    # A worker claims it, tells one batch and dies (its lease runs out).
    fanout = await notifications_db.claim_fanout(services.db, 0.2)
    assert fanout is not None and fanout.stream_id == stream_id
    async with services.db.acquire() as connection, connection.transaction():
        told = await notifications_db.fanout_batch(
            connection, fanout, 0, 100, notifications_db.Channels(True, False, True))
        assert await notifications_db.advance_fanout(
            connection, fanout.id, 0, told[-1].user_id, len(told), False, 0.2)
    await asyncio.sleep(0.3)
    # Two other processes race for the rest.
    others = [await start_services(config) for _ in range(2)]
    try:
        done = await asyncio.gather(*(other.notifications.worker.run_one() for other in others))
        assert sorted(done) == [False, True]
    finally:
        for other in others:
            await other.close()
    counts = await services.db.fetch(
        "SELECT user_id, count(*) AS n FROM notifications GROUP BY user_id")
    assert len(counts) == 250 and {row["n"] for row in counts} == {1}
    assert await services.db.fetchval(
        "SELECT notified FROM notification_fanouts WHERE id = $1", fanout.id) == 250


@pytest.mark.gen_test(timeout=60)
async def test_settings_mutes_and_reading_are_the_callers_own(api, services, notifying):
    alice, bob = await api.register("alice"), await api.register("bob")
    token = alice["access_token"]
    assert (await api.get("/api/notifications/settings", token=token)).json == {
        "stream.online": {"in_app": True, "email": False, "push": True}}
    for body in ({"stream.online": {"email": "yes"}}, {"stream.offline": {"email": True}},
                 {"stream.online": {"sms": True}}, [], {"stream.online": None}):
        response = await api.put("/api/notifications/settings", body, token=token)
        assert response.status == 422, (body, response)
    assert (await api.get("/api/notifications/settings")).status == 401

    # Mutes: a page of users; unknown → 404; yourself → 422; idempotent both ways.
    for _ in range(2):
        assert (await api.put("/api/notifications/mutes/bob", token=token)).status == 204
    mutes = await api.get("/api/notifications/mutes", token=token)
    assert [user["username"] for user in mutes.json["data"]] == ["bob"]
    assert (await api.put("/api/notifications/mutes/nobody", token=token)).status == 404
    assert (await api.put("/api/notifications/mutes/alice", token=token)).status == 422
    for _ in range(2):
        assert (await api.delete("/api/notifications/mutes/bob", token=token)).status == 204
    assert (await api.get("/api/notifications/mutes", token=token)).json["data"] == []

    # Marking another user's notification read does nothing to it.
    notice = await services.notifications.tell(bob["user"]["id"], "webhook.disabled", {})
    response = await api.post("/api/notifications/read", {"ids": [notice.id]}, token=token)
    assert response.status == 204
    assert (await listed(api, bob))["unread_count"] == 1
    for body in ({"ids": []}, {"ids": ["1"]}, {"ids": [0]}, {"ids": list(range(1, 102))}, {}):
        response = await api.post("/api/notifications/read", body, token=token)
        assert response.status == 422, (body, response)
    assert (await api.post("/api/notifications/read-all", token=bob["access_token"])).status == 204
    assert (await listed(api, bob))["unread_count"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_pages_newest_first_retention_and_a_deleted_channel_leaving_every_list(
        api, services, notifying):
    host, alice = await api.register("host"), await api.register("alice")
    await follow(api, alice, "host")
    for number in range(5):
        await services.notifications.tell(alice["user"]["id"], "webhook.disabled",
                                          {"n": number})
    first = await listed(api, alice, "?limit=3")
    assert [n["data"]["n"] for n in first["data"]] == [4, 3, 2]
    cursor = first["pagination"]["next_cursor"]
    second = await listed(api, alice, f"?limit=3&cursor={cursor}")
    assert [n["data"]["n"] for n in second["data"]] == [1, 0]
    assert second["pagination"]["next_cursor"] is None
    assert (await api.get("/api/notifications?cursor=bm9wZQ", token=alice["access_token"])
            ).status == 422

    await go_live(api, services, host)
    await settle(services)
    assert (await listed(api, alice))["unread_count"] == 6
    # The channel's account is deleted: its go-live notice leaves alice's list at once.
    response = await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                                 token=host["access_token"])
    assert response.status == 202, response
    page = await listed(api, alice)
    assert [n["type"] for n in page["data"]] == ["webhook.disabled"] * 5

    # Retention: older than SF_NOTIFICATIONS_RETENTION_DAYS goes with the jobs.
    await services.db.execute(
        "UPDATE notifications SET created_at = now() - interval '100 days' WHERE data->>'n' < '2'")
    assert await services.notifications.purge_expired() == {"deleted": 2}
    assert [n["data"]["n"] for n in (await listed(api, alice))["data"]] == [4, 3, 2]


def test_notification_json_is_api_shape() -> None:
    """The socket's and the list's notification are one shape (the list dumps the same)."""
    from datetime import UTC, datetime

    from sf.schemas.notifications import notification_schema
    from sf.services.notifications import notification_json
    notice = notifications_db.Notification(7, "stream.online", datetime(2026, 1, 2, tzinfo=UTC),
                                           None, {"stream_id": 1})
    assert notification_json(notice) == notification_schema.dump(notice)
    assert json.loads(json.dumps(notification_json(notice)))["created_at"].endswith("Z")


@pytest.mark.gen_test(timeout=60)
async def test_a_tab_on_another_node_hears_the_fan_out_and_an_account_has_twenty_tabs(
        api, services, notifying):
    """The fan-out runs where it was claimed; a follower's socket on another API node gets its
    notice through the bus. Each account may keep 20 sockets per process (1008 beyond)."""
    host, alice = await api.register("host"), await api.register("alice")
    await follow(api, alice, "host")
    other = await start_services(services.config)
    await other.notifications.hub.start()  # sockets only: the fan-out runs on this node
    port = reserve_port()
    server = make_app(other).listen(port, address="127.0.0.1")
    try:
        remote = await socket_of(api, f"http://127.0.0.1:{port}", alice)
        stream_id = await go_live(api, services, host)
        await remote.until(lambda s: s.of_type("notification"), what="the remote notice")
        assert remote.of_type("notification")[0]["notification"]["data"]["stream_id"] == stream_id
        assert remote.of_type("unread_count")[-1]["count"] == 1

        tabs = [await socket_of(api, f"http://127.0.0.1:{port}", alice) for _ in range(19)]
        assert not any(tab.closed.is_set() for tab in tabs)
        extra = await socket_of(api, f"http://127.0.0.1:{port}", alice)
        assert await extra.until_closed() == 1008
        tabs[0].close()
        await asyncio.sleep(0.2)
        again = await socket_of(api, f"http://127.0.0.1:{port}", alice)
        assert not again.closed.is_set()
        assert again.of_type("unread_count") == [{"type": "unread_count", "count": 1}]
    finally:
        server.stop()
        await other.notifications.hub.stop()
        await other.close()
        release_ports([port])
