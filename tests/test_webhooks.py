"""Webhooks for real: the API against PostgreSQL and Redis, and the sender POSTing to a real
HTTP receiver on 127.0.0.1 that checks every signature and records every request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from harness.ports import release_ports, reserve_ports
from sf.db import erasure as erasure_db
from sf.db import webhooks as webhooks_db
from sf.outbound import NOT_PUBLIC, RESOLVE_TIMEOUT
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=60)

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def local_receiver(test: Callable[..., Any]) -> Callable[..., Any]:
    """The test runs with 127.0.0.1/32 in SF_OUTBOUND_ALLOWED_NETWORKS (the receiver's own
    address); every other test has the default empty list."""
    test.allow_loopback = True  # type: ignore[attr-defined]
    return test


def stalling_dns(test: Callable[..., Any]) -> Callable[..., Any]:
    """The test resolves webhook names through a DNS server that never answers
    (SF_OUTBOUND_NAMESERVERS)."""
    test.stalling_dns = True  # type: ignore[attr-defined]
    return test


@pytest.fixture(scope="module")
def silent_dns_server():
    """A UDP "DNS server" on 127.0.0.1 that takes every query and answers none."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def config(base_config, request):
    allowed = LOOPBACK if getattr(request.function, "allow_loopback", False) else ()
    nameservers = ((request.getfixturevalue("silent_dns_server"),)
                   if getattr(request.function, "stalling_dns", False) else ())
    return base_config.replace(
        outbound_allowed_networks=allowed, outbound_nameservers=nameservers, webhook_timeout_seconds=2.0,
        webhook_retry_seconds=0.2, webhook_retry_max_seconds=0.4,
        webhook_give_up_seconds=60.0, webhook_disable_after_failures=3,
        webhook_disable_after_seconds=0.0, mail_poll_seconds=0.1)


@pytest.fixture
def sender(io_loop, services):
    """The services' webhook sender, running for the test."""
    io_loop.run_sync(services.webhook_sender.start)
    yield services.webhook_sender
    io_loop.run_sync(services.webhook_sender.stop)


class Receiver:
    """An aiohttp server on 127.0.0.1 that records each request, with whether its signature
    verifies under `secret`; it answers with the next of `statuses` (then 200), or as
    `handler` says."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = reserve_ports(1)[0]
        self.secret = ""
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.handler: Callable[[web.Request], Any] | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        release_ports([self.port])

    def verifies(self, headers: Any, body: bytes) -> bool:
        timestamp = headers.get("SF-Webhook-Timestamp", "")
        expected = "v1=" + hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body,
                                    hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("SF-Webhook-Signature", ""))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({
            "path": request.path, "headers": dict(request.headers), "body": body,
            "json": json.loads(body) if body else None,
            "verified": self.verifies(request.headers, body), "at": time.time()})
        if self.handler is not None:
            return await self.handler(request)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests came"
            await asyncio.sleep(0.02)
        return self.requests


@pytest.fixture
def receiver(io_loop):
    built = io_loop.run_sync(Receiver().start)
    yield built
    io_loop.run_sync(built.stop)


async def make_webhook(api, token, url, events=("stream.online", "stream.offline",
                                                 "follow.created")):
    response = await api.post("/api/webhooks", {"url": url, "events": list(events)},
                              token=token)
    assert response.status == 201, response
    return response.json


async def deliveries(api, token, webhook_id):
    response = await api.get(f"/api/webhooks/{webhook_id}/deliveries", token=token)
    assert response.status == 200, response
    return response.json["data"]


async def settled(api, token, webhook_id, count=1, timeout=10.0, done=("delivered", "failed")):
    """The webhook's deliveries once `count` of them are in one of the `done` states."""
    deadline = time.monotonic() + timeout
    while True:
        found = await deliveries(api, token, webhook_id)
        if sum(item["status"] in done for item in found) >= count:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def stream_of(services, stream_id, user_id):
    return await services.streams.get_stream(stream_id, user_id)


# --- the owner's API ----------------------------------------------------------------------------

@local_receiver
async def test_the_secret_is_shown_once_and_the_owner_manages_the_webhook(api, services,
                                                                           receiver):
    """security.md#webhook-secret-at-rest"""
    alice = await api.register("alice")
    token = alice["access_token"]
    made = await make_webhook(api, token, receiver.url, ["stream.online"])
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    assert made["enabled"] is True and made["events"] == ["stream.online"]
    assert made["consecutive_failures"] == 0 and made["disabled_reason"] is None
    one = await api.get(f"/api/webhooks/{made['id']}", token=token)
    assert one.status == 200 and "secret" not in one.json
    listed = await api.get("/api/webhooks", token=token)
    assert [item["id"] for item in listed.json["data"]] == [made["id"]]
    assert "secret" not in listed.json["data"][0]
    # The secret rests sealed: the row holds no byte of it in the clear.
    row = await services.db.fetchrow("SELECT secret FROM webhooks WHERE id = $1", made["id"])
    assert made["secret"].encode() not in bytes(row["secret"])

    changed = await api.put(f"/api/webhooks/{made['id']}",
                            {"events": ["follow.created", "stream.offline"]}, token=token)
    assert changed.status == 200 and changed.json["events"] == ["follow.created",
                                                                  "stream.offline"]
    off = await api.put(f"/api/webhooks/{made['id']}", {"enabled": False}, token=token)
    assert off.json["enabled"] is False and off.json["disabled_reason"] == "disabled by its owner"
    unknown = await api.post("/api/webhooks", {"url": receiver.url, "events": ["chat.nope"]},
                             token=token)
    assert unknown.status == 422 and "events.0" in unknown.json["error"]["fields"]
    extra = await api.post("/api/webhooks", {"url": receiver.url, "events": ["stream.online"],
                                             "secret": "mine"}, token=token)
    assert extra.status == 422
    gone = await api.delete(f"/api/webhooks/{made['id']}", token=token)
    assert gone.status == 204
    assert (await api.get(f"/api/webhooks/{made['id']}", token=token)).status == 404


@local_receiver
async def test_webhooks_per_user_are_capped(api, services, receiver):
    token = (await api.register("alice"))["access_token"]
    results = await asyncio.gather(*(
        api.post("/api/webhooks", {"url": receiver.url, "events": ["stream.online"]},
                 token=token) for _ in range(services.config.webhooks_per_user + 3)))
    statuses = sorted(response.status for response in results)
    assert statuses.count(201) == services.config.webhooks_per_user
    assert statuses.count(409) == 3
    refused = next(response for response in results if response.status == 409)
    assert refused.json["error"]["code"] == "conflict"


@local_receiver
async def test_another_users_webhook_is_not_found(api, services, receiver, sender):
    """security.md#webhook-of-another-user"""
    alice = await api.register("alice")
    mallory = (await api.register("mallory"))["access_token"]
    made = await make_webhook(api, alice["access_token"], receiver.url)
    receiver.secret = made["secret"]
    await go_live(api, services, alice)
    [delivery] = await settled(api, alice["access_token"], made["id"])
    base = f"/api/webhooks/{made['id']}"
    answers = [await api.get(base, token=mallory),
               await api.put(base, {"enabled": True}, token=mallory),
               await api.put(base, {"url": "https://93.184.215.14/x"}, token=mallory),
               await api.get(f"{base}/deliveries", token=mallory),
               await api.post(f"{base}/deliveries/{delivery['id']}/redeliver", token=mallory),
               await api.delete(base, token=mallory)]
    assert [answer.status for answer in answers] == [404] * 6
    assert all(answer.json["error"]["code"] == "not_found" for answer in answers)
    # Mallory's own webhook id with Alice's delivery id is no way in either.
    own = await make_webhook(api, mallory, "https://93.184.215.14/hook")
    crossed = await api.post(f"/api/webhooks/{own['id']}/deliveries/{delivery['id']}/redeliver",
                             token=mallory)
    assert crossed.status == 404
    assert (await api.get("/api/webhooks", token=mallory)).json["data"][0]["id"] == own["id"]
    still = await api.get(base, token=alice["access_token"])
    assert still.status == 200 and still.json["url"] == receiver.url
    assert (await api.get(base)).status == 401


# --- events and delivery ------------------------------------------------------------------------

@local_receiver
async def test_stream_online_once_per_stream_and_offline_signed(api, services, receiver, sender):
    alice = await api.register("alice")
    token = alice["access_token"]
    made = await make_webhook(api, token, receiver.url)
    receiver.secret = made["secret"]
    stream_id = await go_live(api, services, alice)
    [online] = await receiver.wait_for(1)
    assert online["verified"], online["headers"]
    assert online["headers"]["Content-Type"] == "application/json"
    assert online["json"]["type"] == "stream.online"
    assert online["json"]["id"] == online["headers"]["SF-Webhook-Id"]
    assert online["json"]["data"]["stream_id"] == stream_id
    assert online["json"]["data"]["username"] == "alice"
    assert set(online["json"]) == {"id", "type", "created_at", "data"}
    assert abs(int(online["headers"]["SF-Webhook-Timestamp"]) - time.time()) < 5
    # An encoder reconnecting continues the stream and tells "live" again: no second event.
    stream = await stream_of(services, stream_id, alice["user"]["id"])
    await services.streams.tell_stream("live", stream)
    await services.streams.tell_stream("live", stream)
    await services.streams.end_stream(stream_id, alice["user"]["id"])
    requests = await receiver.wait_for(2)
    await asyncio.sleep(0.5)
    assert [request["json"]["type"] for request in receiver.requests] == ["stream.online",
                                                                          "stream.offline"]
    assert requests[1]["verified"] and requests[1]["json"]["data"]["stream_id"] == stream_id
    listed = await settled(api, token, made["id"], count=2)
    assert [item["type"] for item in listed] == ["stream.offline", "stream.online"]
    assert all(item["status"] == "delivered" and item["response_code"] == 200
               and item["attempts"] == 1 and item["delivered_at"] for item in listed)
    assert listed[1]["event_id"] == online["headers"]["SF-Webhook-Id"]


@local_receiver
async def test_follow_created_once_however_often_one_follows_again(api, services, receiver,
                                                                   sender):
    """security.md#webhook-follow-flood"""
    alice = await api.register("alice")
    bob = (await api.register("bob"))["access_token"]
    made = await make_webhook(api, alice["access_token"], receiver.url, ["follow.created"])
    receiver.secret = made["secret"]
    for _ in range(20):
        assert (await api.post("/api/users/alice/follow", token=bob)).status == 204
        assert (await api.delete("/api/users/alice/follow", token=bob)).status == 204
    [created] = await receiver.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1
    assert created["verified"] and created["json"]["type"] == "follow.created"
    assert created["json"]["data"]["follower"]["username"] == "bob"
    assert created["json"]["data"]["username"] == "alice"
    # Another follower is another event.
    carol = (await api.register("carol"))["access_token"]
    await api.post("/api/users/alice/follow", token=carol)
    await receiver.wait_for(2)
    assert receiver.requests[1]["json"]["data"]["follower"]["username"] == "carol"


@local_receiver
async def test_chat_messages_of_the_channel_go_to_a_webhook_that_takes_them(
        api, services, receiver, sender):
    """`chat.message`: each message sent in the channel, once, signed; other channels' and
    webhooks without the event get none. The send path only looks in a per-process list."""
    alice, bob = await api.register("alice"), await api.register("bob")
    made = await make_webhook(api, alice["access_token"], receiver.url, ["chat.message"])
    await make_webhook(api, bob["access_token"], receiver.url, ["stream.online"])
    receiver.secret = made["secret"]
    alice_stream = await go_live(api, services, alice)
    bob_stream = await go_live(api, services, bob)
    carol = await api.register("carol")
    sent = await services.chat.send(carol["user"]["id"], alice_stream, alice["user"]["id"],
                                    "hello <b>there</b>", "n1")
    assert sent["type"] == "chat.ack", sent
    other = await services.chat.send(carol["user"]["id"], bob_stream, bob["user"]["id"],
                                     "elsewhere", "n2")
    assert other["type"] == "chat.ack", other
    [message, online] = sorted(await receiver.wait_for(2), key=lambda r: r["json"]["type"])
    await asyncio.sleep(0.5)
    assert [r["json"]["type"] for r in receiver.requests].count("chat.message") == 1
    assert message["verified"] and message["json"]["type"] == "chat.message"
    data = message["json"]["data"]
    assert data["username"] == "alice" and data["message"]["id"] == sent["id"]
    assert data["message"]["text"] == "hello <b>there</b>"
    assert data["message"]["user"]["username"] == "carol"
    assert data["message"]["stream_id"] == alice_stream
    assert online["json"]["type"] == "stream.online"
    # Turned off: the next message is not sent (this process's list is refreshed at once).
    assert (await api.put(f"/api/webhooks/{made['id']}", {"events": ["follow.created"]},
                          token=alice["access_token"])).status == 200
    await services.chat.send(carol["user"]["id"], alice_stream, alice["user"]["id"], "later", "n3")
    await asyncio.sleep(0.5)
    assert [r["json"]["type"] for r in receiver.requests].count("chat.message") == 1


@stalling_dns
@local_receiver
async def test_names_whose_dns_stalls_hold_no_thread_and_no_other_delivery(
        api, services, receiver, sender):
    """security.md#webhook-slow-dns: webhook URLs whose names' DNS never answers, sent in
    parallel, each cost a pending query (c-ares), not one of the loop's few resolver threads:
    they are refused (one answer for every name that does not resolve to public addresses, so
    nobody learns which internal names exist), while the process still resolves names in its
    thread pool and another user's webhook is delivered at once."""
    alice = await api.register("alice")
    made = await make_webhook(api, alice["access_token"], receiver.url, ["follow.created"])
    receiver.secret = made["secret"]
    mallory = (await api.register("mallory"))["access_token"]
    own = await make_webhook(api, mallory, "https://93.184.215.14/x", ["follow.created"])
    started = time.monotonic()
    flooding = asyncio.gather(*(
        api.put(f"/api/webhooks/{own['id']}", {"url": f"https://n{number}.stall.test/x"},
                token=mallory) for number in range(8)))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 1.0)  # threads are free
    bob = (await api.register("bob"))["access_token"]
    assert (await api.post("/api/users/alice/follow", token=bob)).status == 204
    [request] = await receiver.wait_for(1, timeout=2.0)
    assert request["verified"] and request["json"]["type"] == "follow.created"
    answers = await flooding
    assert {answer.status for answer in answers} == {422}
    assert {answer.json["error"]["fields"]["url"][0] for answer in answers} == {NOT_PUBLIC}
    assert time.monotonic() - started < RESOLVE_TIMEOUT + 3
    # The same answer as for a name of this machine that resolves to loopback.
    for url in ("https://localhost/x", "https://n1.stall.test/x"):
        response = await api.put(f"/api/webhooks/{own['id']}", {"url": url}, token=mallory)
        assert response.json["error"]["fields"]["url"] == [NOT_PUBLIC], response


@local_receiver
async def test_a_slow_receivers_backlog_never_holds_another_webhooks_turn(
        api, services, receiver, sender):
    """security.md#webhook-slow-receiver: a webhook whose receiver takes 1.5 s to answer, with
    a backlog of 30 events, has two deliveries in flight at a time; another user's event, queued
    after all of them, is delivered at once, not after the backlog (10 s of it)."""
    slow = Receiver()
    await slow.start()

    async def take_your_time(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.Response(text="ok")

    slow.handler = take_your_time
    try:
        alice = await api.register("alice")
        await make_webhook(api, alice["access_token"], slow.url, ["follow.created"])
        bob = await api.register("bob")
        made = await make_webhook(api, bob["access_token"], receiver.url, ["follow.created"])
        receiver.secret = made["secret"]
        fans = [row["id"] for row in await services.db.fetch(
            """INSERT INTO users (username, password_hash)
               SELECT 'fan' || n, 'x' FROM generate_series(1, 30) n RETURNING id""")]
        for fan in fans:  # what 30 follows of alice queue
            await services.webhooks.follow_created(alice["user"]["id"], fan)
        await slow.wait_for(2, timeout=5)
        queued = time.monotonic()
        await services.webhooks.follow_created(bob["user"]["id"], fans[0])
        [request] = await receiver.wait_for(1, timeout=5)
        assert time.monotonic() - queued < 1.0
        assert request["verified"] and request["json"]["type"] == "follow.created"
        assert len(slow.requests) <= 4  # two in flight at a time, 1.5 s each
        in_flight = await services.db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'sending'")
        assert in_flight <= 2
    finally:
        await slow.stop()


async def test_events_without_webhooks_cost_nothing_and_never_fail_their_source(api, services):
    """A follow of a channel without webhooks queues nothing; one whose queueing fails (the
    table gone for a moment) still succeeds."""
    await api.register("alice")
    bob = (await api.register("bob"))["access_token"]
    assert (await api.post("/api/users/alice/follow", token=bob)).status == 204
    assert await services.db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    async with services.db.acquire() as connection:
        await connection.execute("ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_x")
        try:
            await services.db.execute(
                "INSERT INTO webhooks (user_id, url, events, secret_key_id, secret)"
                " SELECT id, 'https://example.com/', '{follow.created}', 'k', '' FROM users"
                " WHERE username = 'alice'")
            await api.delete("/api/users/alice/follow", token=bob)
            carol = (await api.register("carol"))["access_token"]
            assert (await api.post("/api/users/alice/follow", token=carol)).status == 204
        finally:
            await connection.execute(
                "ALTER TABLE webhook_deliveries_x RENAME TO webhook_deliveries")


@local_receiver
async def test_a_failed_attempt_is_retried_with_the_same_id_and_a_new_signature(
        api, services, receiver, sender):
    alice = await api.register("alice")
    token = alice["access_token"]
    made = await make_webhook(api, token, receiver.url)
    receiver.secret = made["secret"]
    receiver.statuses = [500]
    await go_live(api, services, alice)
    first, second = await receiver.wait_for(2)
    assert first["verified"] and second["verified"]
    assert first["headers"]["SF-Webhook-Id"] == second["headers"]["SF-Webhook-Id"]
    assert first["body"] == second["body"]
    assert second["at"] - first["at"] >= 0.15  # the backoff waited
    [delivery] = await settled(api, token, made["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 2
    assert delivery["event_id"] == first["headers"]["SF-Webhook-Id"]
    assert (await api.get(f"/api/webhooks/{made['id']}", token=token)).json[
        "consecutive_failures"] == 0

    # Redelivery: pending again, due now, the same event id; a new timestamp and signature.
    await asyncio.sleep(1.1)
    again = await api.post(f"/api/webhooks/{made['id']}/deliveries/{delivery['id']}/redeliver",
                           token=token)
    assert again.status == 202, again
    assert again.json["status"] == "pending" and again.json["event_id"] == delivery["event_id"]
    third = (await receiver.wait_for(3))[2]
    assert third["verified"] and third["headers"]["SF-Webhook-Id"] == delivery["event_id"]
    assert third["headers"]["SF-Webhook-Timestamp"] != first["headers"]["SF-Webhook-Timestamp"]
    assert third["headers"]["SF-Webhook-Signature"] != first["headers"]["SF-Webhook-Signature"]
    [delivery] = await settled(api, token, made["id"])
    assert delivery["status"] == "delivered"


@local_receiver
async def test_deliveries_are_listed_in_keyset_pages(api, services, receiver, sender):
    alice = await api.register("alice")
    token = alice["access_token"]
    made = await make_webhook(api, token, receiver.url, ["follow.created"])
    for name in ("bob", "carol", "dave"):
        follower = (await api.register(name))["access_token"]
        await api.post("/api/users/alice/follow", token=follower)
    await settled(api, token, made["id"], count=3)
    first = await api.get(f"/api/webhooks/{made['id']}/deliveries?limit=2", token=token)
    cursor = first.json["pagination"]["next_cursor"]
    assert len(first.json["data"]) == 2 and cursor
    rest = await api.get(f"/api/webhooks/{made['id']}/deliveries?limit=2&cursor={cursor}",
                         token=token)
    assert len(rest.json["data"]) == 1 and rest.json["pagination"]["next_cursor"] is None
    ids = [item["id"] for item in first.json["data"] + rest.json["data"]]
    assert ids == sorted(ids, reverse=True)
    item = rest.json["data"][0]
    assert set(item) == {"id", "event_id", "type", "status", "attempts", "response_code",
                         "last_error", "created_at", "last_attempt_at", "next_attempt_at",
                         "delivered_at"}
    bad = await api.get(f"/api/webhooks/{made['id']}/deliveries?cursor=abc", token=token)
    assert bad.status == 422


@local_receiver
async def test_a_webhook_that_keeps_failing_is_disabled_and_its_owner_told(
        api, services, receiver, sender, mailbox):
    alice = await api.register("alice")
    token = alice["access_token"]
    await services.db.execute("UPDATE users SET email_verified = true WHERE id = $1",
                              alice["user"]["id"])
    made = await make_webhook(api, token, receiver.url)
    receiver.secret = made["secret"]
    receiver.statuses = [500] * 50
    stream_id = await go_live(api, services, alice)
    await receiver.wait_for(3)
    deadline = time.monotonic() + 10
    while True:
        webhook = (await api.get(f"/api/webhooks/{made['id']}", token=token)).json
        if not webhook["enabled"]:
            break
        assert time.monotonic() < deadline, webhook
        await asyncio.sleep(0.05)
    assert webhook["disabled_reason"] == "too many failed deliveries"
    assert webhook["consecutive_failures"] == 3
    [delivery] = await deliveries(api, token, made["id"])
    assert delivery["status"] == "failed" and delivery["response_code"] == 500
    assert "answered 500" in delivery["last_error"]
    mail = await mailbox.wait_for("alice@example.com", count=2)  # after the verification mail
    assert mail.message["Subject"] == "Your webhook was disabled"
    assert receiver.url in mail.message.get_body(("plain",)).get_content()
    told = await api.get("/api/notifications", token=token)
    assert told.status == 200, told
    [notice] = [item for item in told.json["data"] if item["type"] == "webhook.disabled"]
    assert notice["data"]["webhook_id"] == made["id"] and notice["data"]["url"] == receiver.url
    # A disabled webhook gets no events, and refuses redelivery until enabled again.
    await services.streams.end_stream(stream_id, alice["user"]["id"])
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 3
    refused = await api.post(
        f"/api/webhooks/{made['id']}/deliveries/{delivery['id']}/redeliver", token=token)
    assert refused.status == 409
    receiver.statuses = []
    enabled = await api.put(f"/api/webhooks/{made['id']}", {"enabled": True}, token=token)
    assert enabled.json["enabled"] is True and enabled.json["consecutive_failures"] == 0
    again = await api.post(
        f"/api/webhooks/{made['id']}/deliveries/{delivery['id']}/redeliver", token=token)
    assert again.status == 202
    request = (await receiver.wait_for(4))[3]
    assert request["verified"] and request["json"]["type"] == "stream.online"


# --- SSRF -------------------------------------------------------------------------------------

PRIVATE_URLS = [
    "https://127.0.0.1/hook", "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook",
    "https://2130706433/hook", "https://0x7f.0.0.1/hook", "https://169.254.169.254/latest",
    "https://10.1.2.3/hook", "https://192.168.0.1/hook", "https://[fd00::1]/hook",
    "https://localhost/hook", "https://localhost./hook", "https://0.0.0.0/hook",
    "https://[::ffff:7f00:1]/hook", "https://[2002:7f00:1::]/hook",
    # Octal parts (127.0.0.1 and 10.0.0.1 to browsers and inet_aton; a resolver read them as
    # the public 177.0.0.1 and 12.0.0.1 once, so they were taken and then never sent).
    "https://0177.0.0.1/hook", "https://0012.0.0.1/hook", "https://0177.0.0.01/hook",
    "https://127.1/hook",
]


async def test_private_addresses_are_refused_when_a_webhook_is_made(api, services):
    """security.md#webhook-ssrf-private-address"""
    token = (await api.register("alice"))["access_token"]
    for url in PRIVATE_URLS:
        response = await api.post("/api/webhooks", {"url": url, "events": ["stream.online"]},
                                  token=token)
        assert response.status == 422, (url, response)
        assert "url" in response.json["error"]["fields"], url
    for url in ("http://example.com/hook", "ftp://example.com/", "https://user:pw@example.com/",
                "https:///nohost", "https://exa mple.com/", "javascript:alert(1)"):
        response = await api.post("/api/webhooks", {"url": url, "events": ["stream.online"]},
                                  token=token)
        assert response.status == 422, (url, response)
    made = await make_webhook(api, token, "https://93.184.215.14/hook")
    changed = await api.put(f"/api/webhooks/{made['id']}", {"url": "https://127.0.0.1/"},
                            token=token)
    assert changed.status == 422
    assert await services.db.fetchval("SELECT count(*) FROM webhooks") == 1


async def test_names_and_spellings_of_private_addresses_are_refused_at_send_time(
        api, services, sender):
    """security.md#webhook-ssrf-at-send-time: webhooks already stored (made before a name's
    address changed, say) pointing at a listener on 127.0.0.1, in every spelling: each attempt
    fails as blocked before any connection is made (the listener counts connections)."""
    connections = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(True)
        writer.close()

    [port] = reserve_ports(1)
    listener = await asyncio.start_server(count, "127.0.0.1", port)
    try:
        alice = await api.register("alice")
        token = alice["access_token"]
        urls = [f"https://localhost:{port}/", f"https://localhost.:{port}/",
                f"https://2130706433:{port}/", f"https://0x7f.0.0.1:{port}/",
                f"https://127.1:{port}/", f"https://[::ffff:127.0.0.1]:{port}/",
                f"https://[::ffff:7f00:1]:{port}/", f"https://127.0.0.1:{port}/",
                f"http://127.0.0.1:{port}/", f"http://2130706433:{port}/"]
        ids = [(await webhooks_db.create(services.db, services.email_cipher,
                                         alice["user"]["id"], url, ["stream.online"], "secret",
                                         100)).id for url in urls]
        await go_live(api, services, alice)
        for webhook_id, url in zip(ids, urls, strict=True):
            deadline = time.monotonic() + 10
            [delivery] = await deliveries(api, token, webhook_id)
            while delivery["attempts"] == 0 or delivery["status"] == "sending":
                assert time.monotonic() < deadline, delivery
                await asyncio.sleep(0.05)
                [delivery] = await deliveries(api, token, webhook_id)
            assert delivery["status"] in ("pending", "failed") and delivery["response_code"] is None
            # Refused by SF's checks (blocked, or not https), or by aiohttp's URL parser (a
            # non-canonical IPv4 spelling): never sent either way.
            # (c-ares, SF's resolver, reads no IPv4 spelling but the dotted decimal one: such a
            # name does not resolve at all.)
            assert delivery["last_error"] in ("blocked: not a public address",
                                              "not a URL SF sends to",
                                              "name did not resolve"), (url, delivery)
            if "localhost" in url or "[" in url:
                assert delivery["last_error"].startswith("blocked"), (url, delivery)
        assert connections == []
    finally:
        listener.close()
        await listener.wait_closed()
        release_ports([port])


@local_receiver
async def test_a_redirect_is_never_followed(api, services, receiver, sender):
    """security.md#webhook-ssrf-redirect: the receiver (an allowed address) answers 302 to an
    internal address; the attempt fails and the internal address is never asked."""
    internal = await Receiver("127.0.0.2").start()
    try:
        alice = await api.register("alice")
        token = alice["access_token"]
        made = await make_webhook(api, token, receiver.url)

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": internal.url})

        receiver.handler = redirect
        await go_live(api, services, alice)
        await receiver.wait_for(2)
        [delivery] = await deliveries(api, token, made["id"])
        assert delivery["response_code"] == 302 and delivery["status"] != "delivered"
        assert "redirect" in delivery["last_error"]
        assert internal.requests == []
    finally:
        await internal.stop()


@local_receiver
async def test_a_huge_answer_is_read_up_to_the_cap_only(api, services, receiver, sender):
    """security.md#webhook-response-flood: a receiver streaming 10 MB (slowly) does not hold
    the sender: it reads 64 KiB, records the delivery and hangs up."""
    alice = await api.register("alice")
    token = alice["access_token"]
    made = await make_webhook(api, token, receiver.url)
    written = {"bytes": 0, "finished": False}

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 10 * 1024 * 1024
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(160):
                await response.write(chunk)
                written["bytes"] += len(chunk)
                await asyncio.sleep(0.01)
            written["finished"] = True
        except (ConnectionError, RuntimeError):
            pass
        return response

    receiver.handler = flood
    started = time.monotonic()
    await go_live(api, services, alice)
    [delivery] = await settled(api, token, made["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert time.monotonic() - started < services.config.webhook_timeout_seconds
    await asyncio.sleep(0.3)
    assert not written["finished"] and written["bytes"] < 10 * 1024 * 1024


# --- accounts -----------------------------------------------------------------------------------

@local_receiver
async def test_erasure_disables_then_deletes_the_webhooks(api, services, receiver):
    alice = await api.register("alice")
    user_id = alice["user"]["id"]
    made = await make_webhook(api, alice["access_token"], receiver.url)
    await go_live(api, services, alice)
    assert await services.db.fetchval("SELECT count(*) FROM webhook_deliveries"
                                      " WHERE status = 'pending'") == 1
    async with services.db.acquire() as connection, connection.transaction():
        await erasure_db.mark_deleted(connection, user_id, 0)
        await erasure_db.hide_account(connection, user_id)
    row = await services.db.fetchrow("SELECT enabled, disabled_reason FROM webhooks"
                                     " WHERE id = $1", made["id"])
    assert row["enabled"] is False and row["disabled_reason"] == "account deleted"
    assert await services.db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    async with services.db.acquire() as connection, connection.transaction():
        await erasure_db.erase_personal_data(connection, user_id)
    assert await services.db.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_old_deliveries_are_purged_by_the_job(api, services):
    alice = await api.register("alice")
    made = await make_webhook(api, alice["access_token"], "https://93.184.215.14/hook")
    await go_live(api, services, alice)
    await services.db.execute("UPDATE webhook_deliveries SET created_at = now() - interval"
                              " '30 days'")
    assert await services.webhooks.purge_old() == 1
    assert await deliveries(api, alice["access_token"], made["id"]) == []
    assert "webhook_deliveries_retention" in [job.name for job in services.jobs.jobs]
