"""The web front's notifications in a real browser (headless Chromium via Playwright, as
tests/test_web.py) against a real platform: the header's bell (count, list, live arrivals,
reading), the dashboard's Notifications section (channels, muted channels, the service worker)
and Webhooks section (the secret once, deliveries, redeliver), and the unsubscribe page the
go-live mails link to.

Push delivery into the browser is not tested here: Chromium reaches no vendor push service
offline (the server side is tested with a local push service in tests/test_push.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Page

from harness.platform import Platform, hls_ready, wait_for
from harness.ports import release_ports, reserve_ports
from harness.smtp import MailReceiver
from tests.helpers import fetch_value
from tests.test_web import (
    XSS_TITLE,
    Pages,
    access_token,
    assert_no_script_ran,
    browser,  # noqa: F401 (the module's fixture)
    mail_to,
    screenshot,
    signed_in,
    unexpected,
    wait_for_text,
)

pytestmark = [pytest.mark.platform, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def platform(base_config: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # Streams earlier modules' nodes left live share this database, but not their thumbnails:
    # the directory would list them, and their pictures would 404 here (the pages' error check).
    fetch_value(base_config.database_url,
                "UPDATE streams SET is_live = false, ended_at = now() WHERE is_live")
    # Webhooks may reach the test's receiver on 127.0.0.1 (plain http to an allowed address).
    node = Platform(base_config, tmp_path_factory.mktemp("web-notify-node"),
                    SF_MAIL_POLL_SECONDS="0.5", SF_OUTBOUND_ALLOWED_NETWORKS="127.0.0.1/32").start()
    yield node
    node.stop()


@pytest.fixture
def pages(browser: Any, platform: Platform) -> Iterator[Pages]:  # noqa: F811
    opened = Pages(browser, platform.base_url)
    yield opened
    opened.close()


def sql(platform: Platform, statement: str, *args: Any) -> Any:
    """One statement on the platform's database (on a thread of its own: Playwright's sync API
    keeps an event loop running on this one)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(fetch_value, platform.env["SF_DATABASE_URL"], statement, *args).result()


def follow(platform: Platform, fan: dict[str, Any], channel: str) -> None:
    status, body, _ = platform.request("POST", f"/api/users/{channel}/follow", token=fan["token"])
    assert status == 204, body


def notifications(platform: Platform, user: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = platform.request("GET", "/api/notifications?limit=100", token=user["token"])
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def bell_ready(page: Page) -> None:
    """The bell's socket is open and has said the count."""
    page.wait_for_function("() => window.sfBell && window.sfBell.connected && window.sfBell.messages > 0",
                           timeout=15_000)


def bell_count(page: Page, count: int) -> None:
    if count:
        wait_for_text(page, "bell-count", f"^{count}$")
        assert page.get_by_test_id("bell-count").is_visible()
    else:
        page.get_by_test_id("bell-count").wait_for(state="hidden")


def open_bell(page: Page) -> None:
    page.get_by_test_id("bell-button").click()
    page.get_by_test_id("bell-panel").wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('[data-testid=bell-list]').children.length > 0")


def bell_items(page: Page) -> list[dict[str, str]]:
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=bell-item]')].map(
        (item) => ({id: item.dataset.id, unread: item.dataset.unread, text: item.textContent}))""")  # type: ignore[no-any-return]


def go_live(platform: Platform, account: dict[str, Any], username: str) -> dict[str, Any]:
    platform.publish(account["key"], size="320x180", rate=15, seconds=180)
    return wait_for(lambda: platform.live_stream_of(username), 30, what=f"{username} live")  # type: ignore[no-any-return]


# --- the bell ---------------------------------------------------------------------------------

def test_bell_counts_lists_live_and_opens_a_go_live(platform: Platform, pages: Pages) -> None:
    """A follower's open page counts a followed channel going live (through the socket, no
    reload), lists it (its title as text), shows a second one arriving while the list is open,
    opens the stream on a click (marked read), marks all read, and pages older ones."""
    star = platform.register("bellstar")
    other = platform.register("bellother")
    fan = platform.register("bellfan")
    platform.request("PUT", "/api/stream/settings", {"title": XSS_TITLE}, token=star["token"])
    platform.request("PUT", "/api/stream/settings", {"title": "Second show"}, token=other["token"])
    follow(platform, fan, "bellstar")
    follow(platform, fan, "bellother")

    page = signed_in(pages, fan)
    page.goto("/")
    bell_ready(page)
    bell_count(page, 0)
    stream = go_live(platform, star, "bellstar")
    bell_count(page, 1)  # pushed on the socket: no reload
    open_bell(page)
    items = bell_items(page)
    assert len(items) == 1 and items[0]["unread"] == "true"
    assert page.get_by_test_id("bell-title").first.text_content() == XSS_TITLE
    assert "bellstar is live" in items[0]["text"]
    assert page.locator("[data-testid=bell-panel] img[src=x], [data-testid=bell-panel] script").count() == 0

    # The list is open: the next go-live lands on top of it.
    go_live(platform, other, "bellother")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bell-item]').length === 2",
                           timeout=30_000)
    bell_count(page, 2)
    items = bell_items(page)
    assert "bellother is live: Second show" in items[0]["text"]
    assert [item["unread"] for item in items] == ["true", "true"]
    screenshot(page, "bell-open")

    # A click opens the stream and marks that one read (the other stays unread).
    wait_for(lambda: hls_ready(platform, stream["id"]), 60, what="the HLS ladder")
    page.locator(f"[data-testid=bell-item][data-id='{items[1]['id']}'] [data-testid=bell-link]").click()
    page.wait_for_url(f"**/watch/{stream['id']}")
    listed = {item["id"]: item for item in notifications(platform, fan)["data"]}
    assert listed[int(items[1]["id"])]["read_at"] is not None
    assert listed[int(items[0]["id"])]["read_at"] is None
    assert notifications(platform, fan)["unread_count"] == 1
    bell_ready(page)
    bell_count(page, 1)

    # Mark all read: the badge goes, every item reads as read, and the server agrees.
    open_bell(page)
    assert [item["unread"] for item in bell_items(page)] == ["true", "false"]
    page.get_by_test_id("bell-read-all").click()
    bell_count(page, 0)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=bell-item]')]"
                           ".every((item) => item.dataset.unread === 'false')")
    assert notifications(platform, fan)["unread_count"] == 0

    # Older ones a page at a time: 25 more (made here as the fan-out makes them).
    sql(platform, "INSERT INTO notifications (user_id, type, channel_id, data) "
                  "SELECT $1, 'stream.online', $2, jsonb_build_object('stream_id', $3::bigint, "
                  "'username', 'bellstar', 'title', 'Old show ' || g, 'thumbnail', null) "
                  "FROM generate_series(1, 25) AS g RETURNING 1",
        fan["user"]["id"], star["user"]["id"], stream["id"])
    page.reload()
    bell_ready(page)
    bell_count(page, 25)
    open_bell(page)
    assert len(bell_items(page)) == 20
    page.get_by_test_id("bell-more").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bell-item]').length === 27")
    assert page.get_by_test_id("bell-more").is_hidden()
    ids = [int(item["id"]) for item in bell_items(page)]
    assert ids == sorted(ids, reverse=True)  # newest first
    # Escape closes the list and gives the focus back to the bell.
    page.keyboard.press("Escape")
    page.get_by_test_id("bell-panel").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.dataset.testid") == "bell-button"
    assert_no_script_ran(page)
    token = access_token(page)
    assert not [url for url in pages.urls if token in url]
    assert any("/ws/notifications?ticket=" in url for url in pages.urls)
    assert pages.errors == []


def test_bell_falls_back_to_polling_and_reconnects(platform: Platform, pages: Pages) -> None:
    """Sockets that cannot open (the ticket endpoint failing, as during an outage) leave the
    count to GET /api/notifications; the socket comes back by itself once tickets work."""
    fan = platform.register("pollfan")
    channel = platform.register("pollstar")
    sql(platform, "INSERT INTO notifications (user_id, type, channel_id, data) VALUES ($1, "
                  "'stream.online', $2, '{\"stream_id\": 1, \"username\": \"pollstar\", "
                  "\"title\": \"t\"}') RETURNING id", fan["user"]["id"], channel["user"]["id"])
    page = signed_in(pages, fan)
    # Tickets fail for a while: the page polls the list instead.
    page.route("**/api/ws/ticket", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body=json.dumps({"error": {"code": "unavailable", "message": "down"}})))
    page.goto("/")
    bell_count(page, 1)
    assert not page.evaluate("window.sfBell.connected")
    page.unroute("**/api/ws/ticket")
    page.wait_for_function("() => window.sfBell.connected", timeout=20_000)
    assert unexpected(pages.errors, 503) == []


# --- the dashboard ------------------------------------------------------------------------------

def test_notification_settings_mutes_and_service_worker(platform: Platform, pages: Pages) -> None:
    """The channels save on change and read back after a reload; a channel muted from the
    bell shows in the dashboard's list and is unmuted there; enabling browser notifications
    registers /sw.js (and fails as it must offline: no vendor push service), whose push
    handler, fed through DevTools, shows the payload and keeps only same-origin paths."""
    fan = platform.register("setfan")
    channel = platform.register("mutestar")
    sql(platform, "INSERT INTO notifications (user_id, type, channel_id, data) VALUES ($1, "
                  "'stream.online', $2, '{\"stream_id\": 1, \"username\": \"mutestar\", "
                  "\"title\": \"Muted soon\"}') RETURNING id", fan["user"]["id"], channel["user"]["id"])
    page = signed_in(pages, fan)
    page.goto("/dashboard")
    boxes = {name: page.get_by_test_id(f"notify-{name}") for name in ("in-app", "email", "push")}
    page.wait_for_function("() => document.querySelector('[data-testid=notify-in-app]').checked")
    assert not boxes["email"].is_checked() and boxes["push"].is_checked()  # the defaults
    wait_for_text(page, "notify-email-note", "not verified yet")
    boxes["email"].check()
    wait_for_text(page, "notify-status", "^Saved.$")
    page.evaluate("document.querySelector('[data-testid=notify-status]').textContent = ''")
    boxes["in-app"].uncheck()
    wait_for_text(page, "notify-status", "^Saved.$")
    _, settings, _ = platform.request("GET", "/api/notifications/settings", token=fan["token"])
    assert settings["stream.online"] == {"in_app": False, "email": True, "push": True}
    page.reload()
    page.wait_for_function("() => document.querySelector('[data-testid=notify-email]').checked")
    assert not boxes["in-app"].is_checked() and boxes["push"].is_checked()
    screenshot(page, "dashboard-notifications")

    # Mute from the bell's list: the dashboard's list follows at once.
    wait_for_text(page, "mutes", "No muted channels")
    open_bell(page)
    page.get_by_test_id("bell-mute").click()
    wait_for_text(page, "bell-mute", "^Unmute$")
    page.locator("[data-testid=mute][data-username=mutestar]").wait_for()
    _, mutes, _ = platform.request("GET", "/api/notifications/mutes", token=fan["token"])
    assert [user["username"] for user in mutes["data"]] == ["mutestar"]
    page.reload()
    muted = page.locator("[data-testid=mute][data-username=mutestar]")
    muted.wait_for()
    muted.get_by_test_id("mute-remove").click()
    muted.wait_for(state="detached")
    wait_for_text(page, "mutes", "No muted channels")
    _, mutes, _ = platform.request("GET", "/api/notifications/mutes", token=fan["token"])
    assert mutes["data"] == []

    # Browser notifications: off, and no service worker until asked for.
    wait_for_text(page, "push-state", "^Off for this browser")
    assert page.evaluate("navigator.serviceWorker.getRegistration('/').then(Boolean)") is False
    # Enabling registers /sw.js for the whole site, then asks the browser to subscribe at its
    # vendor's push service, which it cannot reach here: the page says so, SF is handed nothing.
    page.context.grant_permissions(["notifications"], origin=platform.base_url)
    page.get_by_test_id("push-enable").click()
    registered = page.evaluate("""() => navigator.serviceWorker.ready.then((registration) => ({
        scope: registration.scope, script: registration.active.scriptURL}))""")
    assert registered == {"scope": f"{platform.base_url}/", "script": f"{platform.base_url}/sw.js"}
    # (Headless Chromium refuses at once: "Registration failed - permission denied".)
    page.get_by_test_id("push-error").wait_for(state="visible", timeout=40_000)
    assert "could not subscribe" in page.get_by_test_id("push-error").inner_text()
    wait_for_text(page, "push-state", "^Off for this browser")
    _, subscriptions, _ = platform.request("GET", "/api/notifications/push/subscriptions",
                                           token=fan["token"])
    assert subscriptions["data"] == []
    # The worker's push handler, fed through DevTools (what its "Push" button does): it shows
    # the payload's title, body and tag, keeping a same-origin path and dropping a foreign URL.
    session = page.context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    session.on("ServiceWorker.workerRegistrationUpdated",
               lambda event: registrations.extend(event["registrations"]))
    session.send("ServiceWorker.enable")
    # (Events reach Python while Playwright is being called: hence the short waits.)
    wait_for(lambda: page.wait_for_timeout(50) or [r for r in registrations
                                                   if r["scopeURL"] == f"{platform.base_url}/"],
             10, what="the worker's registration")
    registration_id = next(r["registrationId"] for r in registrations
                           if r["scopeURL"] == f"{platform.base_url}/")
    for payload in ({"type": "stream.online", "title": "mutestar is live", "body": "<b>Show</b>",
                     "url": "/watch/7", "tag": "stream-7"},
                    {"type": "stream.online", "title": "elsewhere", "body": "",
                     "url": "https://evil.example/x", "tag": "stream-8"}):
        session.send("ServiceWorker.deliverPushMessage", {
            "origin": f"{platform.base_url}/", "registrationId": registration_id,
            "data": json.dumps(payload)})

    def shown() -> list[dict[str, str]]:
        return page.evaluate("""() => navigator.serviceWorker.ready
            .then((registration) => registration.getNotifications())
            .then((list) => list.map((n) => ({title: n.title, body: n.body, tag: n.tag,
                                               url: n.data.url})))""")  # type: ignore[no-any-return]

    notices = wait_for(lambda: len(shown()) == 2 and shown(), 10, what="two notifications")
    assert sorted(notices, key=lambda n: n["tag"]) == [
        {"title": "mutestar is live", "body": "<b>Show</b>", "tag": "stream-7", "url": "/watch/7"},
        {"title": "elsewhere", "body": "", "tag": "stream-8", "url": "/"}]
    # Chromium's own explanation of the refusal (Playwright's contexts are incognito ones).
    assert [error for error in pages.errors if "Push API in incognito" not in error] == []


def test_service_worker_is_served_as_javascript(platform: Platform) -> None:
    status, body, headers = platform.get("/sw.js")
    assert status == 200 and b"notificationclick" in body
    assert headers["Content-Type"].startswith("application/javascript")
    assert headers["Service-Worker-Allowed"] == "/"
    assert "script-src 'self';" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert platform.get("/account/unsubscribe")[0] == 200
    assert platform.get("/sw.js/x")[0] == 404


# --- webhooks -------------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on 127.0.0.1 (a thread): records each request and answers with the
    next of `statuses` (then 200)."""

    def __init__(self) -> None:
        self.port = reserve_ports(1)[0]
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        release_ports([self.port])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    built = Receiver()
    yield built
    built.close()


def signed(secret: str, request: dict[str, Any]) -> bool:
    headers = request["headers"]
    expected = "v1=" + hmac.new(secret.encode(), headers["SF-Webhook-Timestamp"].encode() + b"."
                                + request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["SF-Webhook-Signature"])


def until_first(page: Page, test_id: str, condition: str, timeout: float = 30_000) -> None:
    """Wait until the first element of `test_id` exists and `condition` (JS on `node`) holds."""
    page.wait_for_function(
        f"() => {{ const node = document.querySelector('[data-testid={test_id}]'); "
        f"return Boolean(node) && ({condition}); }}", timeout=timeout)


def delivery_row(page: Page) -> Any:
    return page.get_by_test_id("delivery").first


def test_webhook_secret_once_deliveries_and_redeliver(
        platform: Platform, pages: Pages, receiver: Receiver) -> None:
    """Adding a webhook shows its secret once (gone after a reload, never in a read); its
    deliveries list shows a failed attempt (status, attempts, code), and redeliver sends the
    same event again, which then shows delivered; disable, enable and delete."""
    owner = platform.register("hookowner")
    fan = platform.register("hookfan")
    page = signed_in(pages, owner)
    page.goto("/dashboard")
    wait_for_text(page, "webhooks", "No webhooks yet")
    page.get_by_test_id("webhook-url").fill(receiver.url)
    page.get_by_test_id("webhook-event-online").uncheck()
    page.get_by_test_id("webhook-create").click()
    page.locator("#webhook-form .error").wait_for()  # no event chosen: nothing sent
    assert "at least one" in page.locator("#webhook-form .error").inner_text()
    page.get_by_test_id("webhook-event-follow").check()
    page.get_by_test_id("webhook-create").click()
    box = page.get_by_test_id("webhook-secret-box")
    box.wait_for(state="visible")
    assert "will not be shown again" in box.inner_text()
    secret = page.get_by_test_id("webhook-secret").input_value()
    assert len(secret) > 20
    item = page.get_by_test_id("webhook")
    item.wait_for()
    assert item.get_by_test_id("webhook-url-text").text_content() == receiver.url
    assert item.get_by_test_id("webhook-state").text_content() == "enabled"
    _, listed, _ = platform.request("GET", "/api/webhooks", token=owner["token"])
    assert [hook["events"] for hook in listed["data"]] == [["follow.created"]]
    assert secret not in json.dumps(listed)
    screenshot(page, "dashboard-webhook-secret")
    page.get_by_test_id("webhook-secret-done").click()
    assert box.is_hidden() and page.get_by_test_id("webhook-secret").input_value() == ""
    page.reload()
    page.get_by_test_id("webhook").wait_for()
    assert page.get_by_test_id("webhook-secret-box").is_hidden()
    assert secret not in page.content()

    # An event the receiver refuses: a failed attempt, shown with its code.
    receiver.statuses = [500]
    follow(platform, fan, "hookowner")
    wait_for(lambda: receiver.requests, 20, what="the first delivery attempt")
    page.get_by_test_id("webhook-deliveries").click()
    row = delivery_row(page)
    until_first(page, "delivery-code", "node.textContent === '500'")
    assert row.get_attribute("data-status") == "pending"  # retried later
    assert row.get_by_test_id("delivery-attempts").text_content() == "1"
    assert "follow.created" in (row.text_content() or "")
    screenshot(page, "dashboard-webhook-deliveries")
    # Redeliver now: the same event again, delivered this time.
    row.get_by_test_id("delivery-redeliver").click()
    until_first(page, "delivery", "node.dataset.status === 'delivered'")
    row = delivery_row(page)
    assert row.get_by_test_id("delivery-code").text_content() == "200"
    assert len(receiver.requests) == 2
    first, again = receiver.requests
    assert first["headers"]["SF-Webhook-Id"] == again["headers"]["SF-Webhook-Id"]
    assert json.loads(again["body"])["type"] == "follow.created"
    assert signed(secret, first) and signed(secret, again)

    # Disable (redeliver is off then), enable, delete (two clicks).
    hook = page.get_by_test_id("webhook")
    hook.get_by_test_id("webhook-toggle").click()
    until_first(page, "webhook", "node.dataset.enabled === 'false'")
    wait_for_text(page, "webhook-state", "^disabled: disabled by its owner$")
    until_first(page, "delivery-redeliver", "node.disabled")
    hook.get_by_test_id("webhook-toggle").click()
    until_first(page, "webhook", "node.dataset.enabled === 'true'")
    hook.get_by_test_id("webhook-delete").click()
    wait_for_text(page, "webhook-delete", "^Click again")
    assert platform.request("GET", "/api/webhooks", token=owner["token"])[1]["data"] != []
    hook.get_by_test_id("webhook-delete").click()
    wait_for_text(page, "webhooks", "No webhooks yet")
    assert platform.request("GET", "/api/webhooks", token=owner["token"])[1]["data"] == []
    assert pages.errors == []


# --- the unsubscribe page ---------------------------------------------------------------------

def test_unsubscribe_page_waits_for_the_click(
        platform: Platform, pages: Pages, mail_receiver: MailReceiver) -> None:
    """The go-live mail's link opens a page that does nothing by itself (mail scanners open
    links); its button stops the e-mails. A forged token is refused with the reason shown."""
    star = platform.register("mailstar")
    fan = platform.register("mailfan")
    sql(platform, "UPDATE users SET email_verified = true WHERE id = $1 RETURNING id", fan["user"]["id"])
    status, _, _ = platform.request("PUT", "/api/notifications/settings",
                                    {"stream.online": {"email": True}}, token=fan["token"])
    assert status == 200
    follow(platform, fan, "mailstar")
    go_live(platform, star, "mailstar")
    mail = mail_to(mail_receiver, "mailfan@example.com", "mailstar is live on SF")
    link = next(link for link in mail.links if "/account/unsubscribe#token=" in link)
    assert link.startswith(f"{platform.base_url}/account/unsubscribe#token=")

    page = pages.new_page()  # a browser not signed in: the link alone is enough
    page.goto(link)
    button = page.get_by_test_id("unsubscribe-confirm")
    button.wait_for(state="visible")
    assert "token" not in page.url
    time.sleep(1)  # nothing happens on its own
    _, settings, _ = platform.request("GET", "/api/notifications/settings", token=fan["token"])
    assert settings["stream.online"]["email"] is True
    screenshot(page, "account-unsubscribe")
    button.click()
    wait_for_text(page, "unsubscribe-status", "no more go-live e-mails")
    assert button.is_hidden()
    _, settings, _ = platform.request("GET", "/api/notifications/settings", token=fan["token"])
    assert settings["stream.online"] == {"in_app": True, "email": False, "push": True}

    # A forged token: refused, and the page says why.
    forged = pages.new_page()
    forged.goto(f"/account/unsubscribe#token={fan['user']['id']}.stream.online.AAAAAAAAAAAAAAAAAAAAAAAAAAA")
    forged.get_by_test_id("unsubscribe-confirm").click()
    forged.locator("#unsubscribe .error").wait_for()
    assert "not a valid unsubscribe token" in forged.locator("#unsubscribe .error").inner_text()
    assert forged.get_by_test_id("unsubscribe-confirm").is_enabled()
    # No token at all: no button.
    forged.goto("/account/unsubscribe")
    wait_for_text(forged, "unsubscribe-status", "has no token")
    assert forged.get_by_test_id("unsubscribe-confirm").is_hidden()
    assert unexpected(pages.errors, 422) == []
    assert len([error for error in pages.errors if "HTTP 422" in error]) == 1
