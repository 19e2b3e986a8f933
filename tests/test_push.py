"""Web Push: browsers subscribe with SF's VAPID key, `PushSender` encrypts and signs pushes to
them, and a real local push service (harness/push_service.py) checks the signature and
decrypts them as a browser vendor's would. Real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import time

import pytest

from harness.push_service import PushService, b64url
from sf.config import new_vapid_key
from sf.db import push as push_db
from sf.services.push import PushSender
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=90)

LOCAL = (ipaddress.ip_network("127.0.0.1/32"),)
PASSWORD = "password123"
KEY = "/api/notifications/push/key"
SUBSCRIPTIONS = "/api/notifications/push/subscriptions"


@pytest.fixture(scope="module")
def push_service():
    service = PushService().start()
    yield service
    service.close()


@pytest.fixture
def config(base_config):
    """The local push service is on loopback: the operator's allowance lets SF reach it."""
    return base_config.replace(outbound_allowed_networks=LOCAL)


async def public_key(api) -> str:
    response = await api.get(KEY)
    assert response.status == 200, response
    return response.json["public_key"]


async def subscribe(api, token, push_service, key=None):
    """A browser of the harness subscribes to SF; (its subscription, SF's id)."""
    browser = push_service.subscribe(key or await public_key(api))
    response = await api.post(SUBSCRIPTIONS, browser.subscription_json, token=token)
    assert response.status == 201, response
    return browser, response.json["id"]


def stream_online(stream_id: int = 42) -> dict:
    return {"type": "stream.online", "title": "star is live", "body": "Speedrun \u00e9t\u00e9 #3",
            "url": f"/watch.html?id={stream_id}", "tag": f"stream-{stream_id}"}


async def test_a_push_reaches_the_browser_decrypted_and_signed_with_the_published_key(
        api, services, push_service):
    key = await public_key(api)
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65 and raw[0] == 4
    fan = await api.register("fan")
    browser, subscription_id = await subscribe(api, fan["access_token"], push_service, key)
    # The same subscription again keeps its id.
    again = await api.post(SUBSCRIPTIONS, browser.subscription_json, token=fan["access_token"])
    assert again.status == 200 and again.json == {"id": subscription_id}

    report = await services.push.send_to_users([fan["user"]["id"]], stream_online())
    assert (report.subscriptions, report.delivered, report.removed, report.failed) == (1, 1, 0, 0)
    message = await push_service.wait_for(browser.token)
    assert message.json == stream_online()
    # Signed by the key /push/key publishes, for this push service, for at most 24 hours.
    assert message.vapid_key == key
    assert message.claims["aud"] == push_service.origin
    assert message.claims["sub"] == services.config.vapid_subject
    assert time.time() < message.claims["exp"] <= time.time() + 24 * 3600
    assert message.headers["Ttl"] == "600" and message.headers["Urgency"] == "high"

    listed = await api.get(SUBSCRIPTIONS, token=fan["access_token"])
    assert listed.status == 200
    [entry] = listed.json["data"]
    assert entry["id"] == subscription_id and entry["origin"] == push_service.origin
    assert set(entry) == {"id", "origin", "created_at", "last_success_at"}
    assert entry["last_success_at"] is not None and browser.token not in listed.body.decode()
    assert listed.json["pagination"] == {"next_cursor": None}
    # send_to_user is the one-user form; users without subscriptions cost nothing.
    other = await api.register("other")
    assert (await services.push.send_to_user(other["user"]["id"], stream_online())).subscriptions == 0
    assert (await services.push.send_to_user(fan["user"]["id"], stream_online(7))).delivered == 1
    assert (await push_service.wait_for(browser.token, 2)).json["tag"] == "stream-7"


async def test_the_push_service_refuses_a_push_signed_with_another_key(api, services, config,
                                                                       push_service):
    """The harness's check can fail: the same push signed with a key the subscription was not
    made with is a 403, counted as failed, and the subscription stays."""
    fan = await api.register("fan")
    browser, subscription_id = await subscribe(api, fan["access_token"], push_service)
    impostor = PushSender(config.replace(vapid_private_key=new_vapid_key()), services.db)
    try:
        report = await impostor.send_to_users([fan["user"]["id"]], stream_online())
    finally:
        await impostor.close()
    assert (report.delivered, report.failed, report.removed) == (0, 1, 0)
    assert [r.status for r in push_service.refusals if r.token == browser.token] == [403]
    assert push_service.received(browser.token) == []
    assert [s.id for s in await push_db.subscriptions_of(services.db, fan["user"]["id"])] \
        == [subscription_id]
    # A push without any VAPID header is a 401 from the service (nothing SF sends).
    response = await api.client.fetch(browser.endpoint, method="POST", body=b"x",
                                      headers={"TTL": "60"}, raise_error=False)
    assert response.code == 401


async def test_a_gone_subscription_is_deleted_and_other_failures_are_counted(api, services,
                                                                             push_service):
    fan = await api.register("fan")
    gone, gone_id = await subscribe(api, fan["access_token"], push_service)
    missing, _ = await subscribe(api, fan["access_token"], push_service)
    broken, broken_id = await subscribe(api, fan["access_token"], push_service)
    fine, fine_id = await subscribe(api, fan["access_token"], push_service)
    push_service.answer(gone.token, 410)
    push_service.answer(missing.token, 404)
    push_service.answer(broken.token, 500)
    report = await services.push.send_to_users([fan["user"]["id"]], stream_online())
    assert (report.subscriptions, report.delivered, report.removed, report.failed) == (4, 1, 2, 1)
    left = await api.get(SUBSCRIPTIONS, token=fan["access_token"])
    assert sorted(entry["id"] for entry in left.json["data"]) == [broken_id, fine_id]
    assert gone_id not in [entry["id"] for entry in left.json["data"]]
    await push_service.wait_for(fine.token)


async def test_another_users_subscription_is_not_found(api, push_service):
    """security.md#push-subscription-cross-user"""
    alice = await api.register("alice")
    mallory = await api.register("mallory")
    _, subscription_id = await subscribe(api, alice["access_token"], push_service)
    path = f"{SUBSCRIPTIONS}/{subscription_id}"
    theirs = await api.delete(path, token=mallory["access_token"])
    assert theirs.status == 404 and theirs.json["error"]["code"] == "not_found"
    assert (await api.get(SUBSCRIPTIONS, token=mallory["access_token"])).json["data"] == []
    assert len((await api.get(SUBSCRIPTIONS, token=alice["access_token"])).json["data"]) == 1
    assert (await api.delete(path, token=alice["access_token"])).status == 204
    assert (await api.delete(path, token=alice["access_token"])).status == 404
    assert (await api.delete(f"{SUBSCRIPTIONS}/999999", token=alice["access_token"])).status == 404


async def test_an_endpoint_belongs_to_one_account_and_each_keeps_its_newest_ten(api, services,
                                                                                push_service):
    """security.md#push-shared-browser: a browser someone else signs in on next gets their
    pushes, not the first account's."""
    first = await api.register("first")
    second = await api.register("second")
    browser, _ = await subscribe(api, first["access_token"], push_service)
    moved = await api.post(SUBSCRIPTIONS, browser.subscription_json, token=second["access_token"])
    assert moved.status == 201
    assert (await api.get(SUBSCRIPTIONS, token=first["access_token"])).json["data"] == []
    report = await services.push.send_to_users([first["user"]["id"]], stream_online())
    assert report.subscriptions == 0
    ids = [(await subscribe(api, second["access_token"], push_service))[1] for _ in range(11)]
    listed = (await api.get(SUBSCRIPTIONS, token=second["access_token"])).json["data"]
    assert [entry["id"] for entry in listed] == list(reversed(ids))[:10]


def point_not_on_the_curve() -> str:
    raw = bytes([4]) + os.urandom(64)
    return b64url(raw)


@pytest.mark.parametrize("change,field", [
    (lambda s: s["keys"].update(p256dh=point_not_on_the_curve()), "keys"),
    (lambda s: s["keys"].update(p256dh=b64url(os.urandom(33))), "keys"),
    (lambda s: s["keys"].update(p256dh=s["keys"]["p256dh"][:-4]), "keys"),
    (lambda s: s["keys"].update(p256dh="not base64!" * 8), "keys"),
    (lambda s: s["keys"].update(auth=b64url(os.urandom(15))), "keys"),
    (lambda s: s["keys"].update(auth=b64url(os.urandom(32))), "keys"),
    (lambda s: s["keys"].pop("auth"), "keys"),
    (lambda s: s.pop("keys"), "keys"),
    (lambda s: s["keys"].update(extra="x"), "keys"),
    (lambda s: s.update(endpoint="not a url"), "endpoint"),
    (lambda s: s.update(endpoint="https://push.example.com/" + "a" * 2048), "endpoint"),
    (lambda s: s.update(endpoint="http://push.example.com/x"), "endpoint"),
    (lambda s: s.update(endpoint="https://user:pw@push.example.com/x"), "endpoint"),
    # Brackets around what is no IPv6 address: a 500 once (security.md#push-endpoint-ssrf).
    (lambda s: s.update(endpoint="https://[::ffff:127.1]/x"), "endpoint"),
    (lambda s: s.update(endpoint="https://[127.0.0.1]/x"), "endpoint"),
    (lambda s: s.update(endpoint="https://[zz]/x"), "endpoint"),
    (lambda s: s.update(endpoint="https://[/x"), "endpoint"),
    (lambda s: s.update(endpoint="https://]/x"), "endpoint"),
    # An IPv4 address in octal (127.0.0.1 to inet_aton, 177.0.0.1 to a resolver once).
    (lambda s: s.update(endpoint="https://0177.0.0.1/x"), "endpoint"),
    (lambda s: s.update(expirationTime="soon"), "expirationTime"),
    (lambda s: s.update(subscriptionId="x"), "subscriptionId"),
])
async def test_invalid_subscriptions_are_refused(api, push_service, change, field):
    fan = await api.register("fan")
    body = push_service.subscribe(await public_key(api)).subscription_json
    change(body)
    response = await api.post(SUBSCRIPTIONS, body, token=fan["access_token"])
    assert response.status == 422, response
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert any(name.split(".")[0] == field for name in error["fields"]), error
    assert (await api.get(SUBSCRIPTIONS, token=fan["access_token"])).json["data"] == []


async def test_padded_keys_and_an_expiration_time_are_taken(api, services, push_service):
    fan = await api.register("fan")
    browser = push_service.subscribe(await public_key(api))
    body = browser.subscription_json
    body["keys"] = {name: value + "=" * (-len(value) % 4) for name, value in body["keys"].items()}
    body["expirationTime"] = int((time.time() + 3600) * 1000)
    assert (await api.post(SUBSCRIPTIONS, body, token=fan["access_token"])).status == 201
    assert (await services.push.send_to_user(fan["user"]["id"], stream_online())).delivered == 1
    assert (await push_service.wait_for(browser.token)).json == stream_online()


async def test_every_subscription_route_needs_a_signed_in_user(api, push_service):
    body = push_service.subscribe(await public_key(api)).subscription_json
    for method, path, payload in (("POST", SUBSCRIPTIONS, body), ("GET", SUBSCRIPTIONS, None),
                                  ("DELETE", f"{SUBSCRIPTIONS}/1", None)):
        response = await api.request(method, path, payload)
        assert response.status == 401, (method, response)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await api.get(KEY)).status == 200


async def test_the_loop_keeps_turning_while_hundreds_of_pushes_go_out(api, services,
                                                                     push_service):
    """Encryption is CPU work on the loop: it is spread over the sends, never one long stall."""
    fan = await api.register("fan")
    key = await public_key(api)
    browsers = [push_service.subscribe(key) for _ in range(300)]
    # Past the per-account cap, straight into the table: as 300 followers' browsers would be.
    await services.db.executemany(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth) VALUES ($1, $2, $3, $4)",
        [(fan["user"]["id"], b.endpoint, b.p256dh, b64url(b.auth)) for b in browsers])
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    started = time.monotonic()
    report = await services.push.send_to_users([fan["user"]["id"]], stream_online())
    elapsed = time.monotonic() - started
    done.set()
    await ticking
    assert report.delivered == 300 and report.failed == 0, report
    print(f"300 pushes in {elapsed:.3f} s, longest loop gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) < 0.25, (max(gaps), elapsed)


class TestWithoutTheAllowance:
    """security.md#push-endpoint-ssrf: without SF_OUTBOUND_ALLOWED_NETWORKS an endpoint on a
    private, loopback or link-local address is refused at subscribe time (literal or resolved)
    and never contacted at send time either."""

    @pytest.fixture
    def config(self, base_config):
        return base_config

    @pytest.mark.parametrize("endpoint", [
        "http://127.0.0.1:{port}/push/x", "https://127.0.0.1:{port}/push/x",
        "https://[::ffff:127.0.0.1]:{port}/push/x", "https://10.0.0.7/push/x",
        "https://169.254.169.254/latest/meta-data", "https://localhost:{port}/push/x",
        "https://[::1]:{port}/push/x",
        # Loopback by definition whatever the resolver says (RFC 6761), and names that do not
        # resolve to public addresses now (the webhooks' rule).
        "https://localhost.:{port}/push/x", "https://foo.localhost/push/x",
        "https://foo.localhost./push/x", "https://push.invalid/x",
    ])
    async def test_a_private_endpoint_is_refused_and_never_contacted(self, api, push_service,
                                                                     endpoint):
        fan = await api.register("fan")
        body = push_service.subscribe(await public_key(api)).subscription_json
        before = push_service.requests
        body["endpoint"] = endpoint.format(port=push_service.port)
        response = await api.post(SUBSCRIPTIONS, body, token=fan["access_token"])
        assert response.status == 422, response
        assert "endpoint" in response.json["error"]["fields"]
        assert push_service.requests == before

    async def test_a_stored_private_endpoint_is_never_contacted_and_is_deleted(
            self, api, services, push_service):
        fan = await api.register("fan")
        browser = push_service.subscribe(await public_key(api))
        # As if the operator's allowance was withdrawn after the browser subscribed.
        await push_db.subscribe(services.db, fan["user"]["id"], browser.endpoint, browser.p256dh,
                                b64url(browser.auth), None)
        before = push_service.requests
        report = await services.push.send_to_users([fan["user"]["id"]], stream_online())
        assert (report.delivered, report.removed) == (0, 1)
        assert push_service.requests == before
        assert await push_db.subscriptions_of(services.db, fan["user"]["id"]) == []


async def test_deleting_the_account_deletes_its_push_subscriptions(api, services, push_service):
    """security.md#push-shared-browser: a deleted account's browsers hear nothing more."""
    fan = await api.register("fan")
    await subscribe(api, fan["access_token"], push_service)
    response = await api.request("DELETE", "/api/users/profile", {"password": PASSWORD},
                                 token=fan["access_token"])
    assert response.status == 202, response
    assert await push_db.subscriptions_of(services.db, fan["user"]["id"]) == []
    count = await services.db.fetchval("SELECT count(*) FROM push_subscriptions")
    assert count == 0


async def test_a_go_live_pushes_to_the_followers_who_want_it(api, services, push_service):
    """The fan-out (sf/services/notifications.py) hands the followers whose `push` channel is
    on to the sender; the browser decrypts the go-live notice the service worker shows."""
    await services.notifications.start()
    try:
        host = await api.register("host")
        fan, quiet = await api.register("fan"), await api.register("quiet")
        browsers = {}
        for user in (fan, quiet):
            assert (await api.post("/api/users/host/follow",
                                   token=user["access_token"])).status == 204
            browsers[user["user"]["username"]], _ = await subscribe(
                api, user["access_token"], push_service)
        response = await api.put("/api/notifications/settings", {"stream.online": {"push": False}},
                                 token=quiet["access_token"])
        assert response.status == 200, response
        await api.put("/api/stream/settings", {"title": "Night run"}, token=host["access_token"])
        stream_id = await go_live(api, services, host)
        message = await push_service.wait_for(browsers["fan"].token)
        assert message.json == {"type": "stream.online", "title": "host is live",
                                "body": "Night run", "url": f"/watch/{stream_id}",
                                "tag": f"stream-{stream_id}"}
        await asyncio.sleep(0.5)
        assert push_service.received(browsers["quiet"].token) == []
    finally:
        await services.notifications.stop()
