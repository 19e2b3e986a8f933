"""The web front in a real browser: headless Chromium (Debian's) driven by Playwright, against
a real platform (nginx + API node + FFmpeg publishing a synthetic stream).

Screenshots of every page go to var/test-artifacts/web/ (git-ignored with var/).
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness.browser import launch_chromium
from harness.platform import Platform, hls_ready, wait_for
from harness.smtp import MailReceiver, ReceivedMail
from sf.config import PROJECT_ROOT
from sf.node.tls import write_self_signed
from tests.helpers import fetch_value

ARTIFACTS = PROJECT_ROOT / "var" / "test-artifacts" / "web"
PASSWORD = "password123"
XSS_TITLE = '<img src=x onerror="window.__xss=1"> Live & "loud" <script>window.__xss=2</script>'
XSS_BIO = "<b>bold?</b><svg onload=\"window.__xss=3\"></svg> I stream </p><iframe src=/>"

pytestmark = [pytest.mark.platform, pytest.mark.timeout(600)]


class Pages:
    """Browser contexts (each a separate visitor with its own cookies) whose pages record every
    console error and uncaught exception; the test ends by asserting there were none."""

    def __init__(self, browser: Browser, base_url: str, **context_options: Any) -> None:
        self.browser = browser
        self.base_url = base_url
        self.context_options = context_options
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []
        self.urls: list[str] = []  # every request and WebSocket URL: tokens never go there

    def new_page(self, viewport: tuple[int, int] = (1280, 800)) -> Page:
        context = self.browser.new_context(
            base_url=self.base_url, viewport={"width": viewport[0], "height": viewport[1]},
            **self.context_options)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda message: self.errors.append(
            f"console {message.type}: {message.text} @ {page.url}")
            if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error} @ {page.url}"))
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", lambda response: self.errors.append(
            f"HTTP {response.status} {response.url}") if response.status >= 400 else None)
        page.on("websocket", lambda socket: self.urls.append(socket.url))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def platform(base_config: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    node = Platform(base_config, tmp_path_factory.mktemp("web-node"),
                    SF_STATS_SAMPLE_SECONDS="2", SF_MAIL_POLL_SECONDS="0.5").start()
    yield node
    node.stop()


@pytest.fixture
def pages(browser: Browser, platform: Platform) -> Iterator[Pages]:
    opened = Pages(browser, platform.base_url)
    yield opened
    opened.close()


def sign_up(page: Page, username: str) -> None:
    page.goto("/login")
    page.get_by_test_id("tab-sign-up").click()
    page.get_by_test_id("signup-username").fill(username)
    page.get_by_test_id("signup-email").fill(f"{username}@example.com")
    page.get_by_test_id("signup-password").fill(PASSWORD)
    page.get_by_test_id("signup-accept-policy").check()
    screenshot(page, "login")
    page.get_by_test_id("signup-submit").click()
    page.wait_for_url("**/dashboard")
    page.wait_for_function("() => document.querySelector('#rtmp-url').value !== ''")


def sign_in(page: Page, login: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_test_id("login-name").fill(login)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def mail_to(receiver: MailReceiver, address: str, subject: str, count: int = 1) -> ReceivedMail:
    """The `count`-th mail with this subject the platform sent to `address`."""
    def arrived() -> list[ReceivedMail]:
        return [mail for mail in receiver.to(address) if mail.message["Subject"] == subject]
    return wait_for(lambda: arrived()[count - 1:], 20, what=f"mail #{count} to {address}")[0]


def unexpected(errors: list[str], *statuses: int) -> list[str]:
    """The recorded errors but the failed answers (and their console lines) a test expects."""
    return [error for error in errors if not any(f"HTTP {status} " in error
                                                 or f"status of {status} " in error
                                                 for status in statuses)]


def access_token(page: Page) -> str:
    return page.evaluate("JSON.parse(localStorage.getItem('sf.session')).access_token")  # type: ignore[no-any-return]


def playback_state(page: Page) -> dict[str, float]:
    return page.evaluate("""() => {
        const video = document.querySelector('#video');
        const quality = video.getVideoPlaybackQuality();
        return {time: video.currentTime, frames: quality.totalVideoFrames,
                dropped: quality.droppedVideoFrames, paused: video.paused};
    }""")  # type: ignore[no-any-return]


def assert_playing(page: Page) -> None:
    """The video really plays: time advances and decoded frames rise."""
    page.wait_for_function("() => window.sfWatch && window.sfWatch.playing", timeout=60_000)
    before = playback_state(page)
    time.sleep(3)
    after = playback_state(page)
    assert not after["paused"]
    assert after["time"] - before["time"] > 1.5, (before, after)
    assert after["frames"] - before["frames"] > 20, (before, after)


def wait_for_text(page: Page, test_id: str, pattern: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([id, pattern]) => new RegExp(pattern).test("
        "document.querySelector(`[data-testid=${id}]`)?.textContent || '')",
        arg=[test_id, pattern], timeout=timeout)


def wait_for_status(page: Page, form: str, text: str) -> None:
    page.wait_for_function("([form, text]) => document.querySelector(`${form} .status`)"
                           ".textContent === text", arg=[form, text])


def assert_no_script_ran(page: Page) -> None:
    assert page.evaluate("window.__xss") is None


def test_csp_and_security_headers_on_every_page(platform: Platform) -> None:
    for path in ("/", "/watch/1", "/login", "/dashboard", "/account/verify-email",
                 "/account/reset-password", "/account/unsubscribe", "/sw.js", "/static/js/api.js",
                 "/static/css/app.css", "/vendor/hls/hls.min.js", "/vendor/hls/hls.worker.js",
                 "/vendor/uplot/uPlot.iife.min.js"):
        status, body, headers = platform.get(path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        assert "worker-src 'self';" in csp  # hls.js's worker is a file, not a blob
        assert "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        if path.endswith(".js"):
            assert headers["Content-Type"].startswith("application/javascript")
    # Pages carry no inline script or style for the CSP to refuse.
    for page in ("index", "watch", "login", "dashboard", "account"):
        html = (PROJECT_ROOT / "web" / f"{page}.html").read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page
        assert "<style" not in html and not re.search(r"\s(?:style|on[a-z]+)=", html), page
    # Unknown paths and the library's package files stay out of reach.
    assert platform.get("/watch/abc")[0] == 404
    assert platform.get("/account/other")[0] == 404
    assert platform.get("/account.html")[0] == 404
    assert platform.get("/vendor/hls/../package.json")[0] in (400, 404)
    assert platform.get("/package.json")[0] == 404
    assert platform.get("/node_modules/hls.js/package.json")[0] == 404


def test_sign_up_reveal_key_go_live_and_watch(platform: Platform, pages: Pages) -> None:
    streamer = pages.new_page()
    sign_up(streamer, "webstar")
    # The key stays hidden until revealed; the RTMP URL is the one to paste into OBS.
    assert streamer.get_by_test_id("rtmp-url").input_value() == platform.rtmp
    key_input = streamer.get_by_test_id("stream-key")
    assert key_input.input_value() == "" and key_input.get_attribute("type") == "password"
    status, api_key, _ = platform.request("GET", "/api/stream/key", token=access_token(streamer))
    assert status == 200 and api_key["stream_key"] not in streamer.content()
    streamer.get_by_test_id("reveal-key").click()
    assert key_input.input_value() == api_key["stream_key"]
    # Reset (two steps) gives a new key at once.
    streamer.get_by_test_id("reset-key").click()
    streamer.get_by_test_id("reset-key").click()
    wait_for(lambda: key_input.input_value() not in ("", api_key["stream_key"]), 10,
             what="the new key")
    key = key_input.input_value()
    assert key.startswith("live_")
    # Stored-XSS attempts in the default title and the bio, through the forms.
    defaults = streamer.locator("#defaults-form")
    defaults.get_by_test_id("default-title").fill(XSS_TITLE)
    defaults.get_by_test_id("default-category").select_option(label="Just Chatting")
    defaults.get_by_test_id("defaults-save").click()
    wait_for_status(streamer, "#defaults-form", "Saved.")
    streamer.get_by_test_id("bio-input").fill(XSS_BIO)
    streamer.get_by_test_id("bio-save").click()
    wait_for_status(streamer, "#profile-form", "Saved.")
    screenshot(streamer, "dashboard-before-live")
    # A reload with no access token left signs in again through the refresh cookie + CSRF header.
    streamer.evaluate("localStorage.removeItem('sf.session')")
    streamer.reload()
    wait_for_text(streamer, "nav-user", "^webstar$")
    streamer.goto("/")

    # Go live with OBS's stand-in (FFmpeg) and the revealed key.
    platform.publish(key, size="1280x720", rate=24, seconds=240)
    stream = wait_for(lambda: platform.live_stream_of("webstar"), 30, what="the stream to go live")
    sid = stream["id"]
    assert stream["title"] == XSS_TITLE
    wait_for(lambda: hls_ready(platform, sid), 60, what="the HLS ladder")
    wait_for(lambda: platform.stream(sid)["thumbnail"], 30, what="a thumbnail")

    # The directory lists it (the title as text), with its thumbnail, and links to it.
    viewer = pages.new_page()
    viewer.goto("/")
    card = viewer.locator(f"[data-stream-id='{sid}']")
    card.wait_for(timeout=30_000)
    assert card.get_by_test_id("stream-title").text_content() == XSS_TITLE
    assert card.locator("img[src^='/media/thumbnails/']").count() == 1
    assert viewer.locator("img[src=x], [data-testid=stream-grid] script").count() == 0
    viewer.wait_for_function(
        f"() => document.querySelector(\"[data-stream-id='{sid}'] img\").naturalWidth > 0")
    screenshot(viewer, "directory")
    # Search and category filters narrow the list.
    viewer.get_by_test_id("search").fill("no such title at all")
    viewer.wait_for_function(f"() => !document.querySelector(\"[data-stream-id='{sid}']\")")
    viewer.get_by_test_id("search").fill("loud")
    card.wait_for(timeout=10_000)
    # Keyboard: focus the card's link and press Enter.
    card.get_by_test_id("stream-link").focus()
    viewer.keyboard.press("Enter")
    viewer.wait_for_url(f"**/watch/{sid}")
    assert_playing(viewer)
    wait_for_text(viewer, "viewers", r"^1 viewer$")
    assert viewer.get_by_test_id("title").text_content() == XSS_TITLE
    assert XSS_BIO in (viewer.get_by_test_id("bio").text_content() or "")
    assert viewer.locator("#bio *, img[src=x], iframe, svg[onload]").count() == 0
    qualities = viewer.get_by_test_id("quality").locator("option").all_text_contents()
    assert qualities[0].startswith("Auto") and "720p" in qualities and "480p" in qualities
    # Latency as hls.js reports it, a sanity bound (bench/web_latency.py measures it properly).
    latency = viewer.evaluate("window.sfWatch.hls.latency")
    assert 0 < latency < 8, latency

    # A second viewer (another browser, its own viewer cookie) makes two, on both pages.
    second = pages.new_page(viewport=(390, 844))  # phone-sized
    second.goto(f"/watch/{sid}")
    assert_playing(second)
    wait_for_text(second, "viewers", r"^2 viewers$")
    wait_for_text(viewer, "viewers", r"^2 viewers$")
    # The directory the streamer left open (since before going live) shows the stream and its
    # count, updated without a reload.
    streamer.wait_for_function(
        "(sid) => document.querySelector(`[data-stream-id='${sid}'] [data-role=viewers]`)"
        "?.textContent === '2 viewers'", arg=sid, timeout=30_000)
    second.get_by_test_id("quality").select_option(label="480p")
    screenshot(viewer, "watch")
    screenshot(second, "watch-phone")
    assert second.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # The dashboard: live, healthy transcoder, statistics with a chart; a new live title
    # reaches the viewers' pages through the WebSocket.
    streamer.goto("/dashboard")
    wait_for_text(streamer, "live-state", "^Live since")
    streamer.wait_for_function("() => document.querySelector('#health').dataset.state === 'healthy'",
                               timeout=30_000)
    streamer.locator("#chart canvas").first.wait_for(timeout=60_000)
    wait_for_text(streamer, "stream-stats", "Peak viewers[1-9]", timeout=60_000)
    streamer.get_by_test_id("live-title").fill("Renamed <i>live</i>")
    streamer.get_by_test_id("live-save").click()
    wait_for_text(viewer, "title", "^Renamed <i>live</i>$")
    screenshot(streamer, "dashboard-live")
    for page in (viewer, second, streamer):
        assert_no_script_ran(page)
    token = access_token(streamer)
    assert not [url for url in pages.urls if token in url]
    assert any("/ws/streams/" in url for url in pages.urls)
    assert pages.errors == []


def test_watch_page_goes_offline_and_comes_back_by_itself(platform: Platform, pages: Pages) -> None:
    user = platform.register("comeback")
    publisher = platform.publish(user["key"], seconds=120)
    first = wait_for(lambda: platform.live_stream_of("comeback"), 30, what="the stream")
    wait_for(lambda: hls_ready(platform, first["id"]), 60, what="HLS")
    viewer = pages.new_page()
    viewer.goto(f"/watch/{first['id']}")
    assert_playing(viewer)
    publisher.kill()  # the encoder goes away; past the grace period the stream ends
    publisher.wait()
    viewer.get_by_test_id("offline").wait_for(state="visible", timeout=40_000)
    wait_for_text(viewer, "state", "^OFFLINE$")
    screenshot(viewer, "watch-offline")
    wait_for(lambda: not platform.stream(first["id"])["is_live"], 20, what="the stream to end")
    platform.publish(user["key"], seconds=120)
    second = wait_for(lambda: platform.live_stream_of("comeback"), 30, what="the new stream")
    assert second["id"] != first["id"]
    wait_for(lambda: hls_ready(platform, second["id"]), 60, what="HLS of the new stream")
    viewer.wait_for_url(f"**/watch/{second['id']}", timeout=30_000)
    viewer.get_by_test_id("offline").wait_for(state="hidden", timeout=30_000)
    assert_playing(viewer)
    wait_for_text(viewer, "viewers", r"^1 viewer$")
    assert pages.errors == []


def test_sign_up_needs_the_privacy_policy_accepted(platform: Platform, pages: Pages) -> None:
    """The sign-up form shows the policy (as text) and its version, refuses to send without the
    box ticked, and registers the account with the version accepted."""
    page = pages.new_page()
    page.goto("/login")
    page.get_by_test_id("tab-sign-up").click()
    page.get_by_test_id("signup-username").fill("webconsent")
    page.get_by_test_id("signup-email").fill("webconsent@example.com")
    page.get_by_test_id("signup-password").fill(PASSWORD)
    status, policy, _ = platform.request("GET", "/api/legal/privacy-policy")
    assert status == 200
    page.get_by_test_id("privacy-policy").click()
    wait_for_text(page, "privacy-policy", policy["version"])
    assert "# Privacy policy" in page.get_by_test_id("privacy-policy").inner_text()
    page.get_by_test_id("signup-submit").click()
    page.locator("#sign-up .error").wait_for()
    assert "privacy policy" in page.locator("#sign-up .error").inner_text()
    assert platform.request("GET", "/api/users/webconsent")[0] == 404  # nothing was sent
    page.get_by_test_id("signup-accept-policy").check()
    page.get_by_test_id("signup-submit").click()
    page.wait_for_url("**/dashboard")
    token = page.evaluate("JSON.parse(localStorage.getItem('sf.session')).access_token")
    status, profile, _ = platform.request("GET", "/api/users/profile", token=token)
    assert profile["privacy_policy_accepted"] == policy["version"]
    assert pages.errors == []


def test_follow_and_following_tab(platform: Platform, pages: Pages) -> None:
    star = platform.register("followme")
    platform.request("PUT", "/api/stream/settings", {"title": "Followed stream"},
                     token=star["token"])
    platform.publish(star["key"], seconds=90)
    stream = wait_for(lambda: platform.live_stream_of("followme"), 30, what="the stream")
    wait_for(lambda: hls_ready(platform, stream["id"]), 60, what="HLS")
    fan = pages.new_page(viewport=(390, 844))
    sign_up(fan, "webfan")
    fan.goto("/")
    fan.get_by_test_id("tab-following").click()
    wait_for_text(fan, "directory-status", "Nobody you follow")
    fan.goto(f"/watch/{stream['id']}")
    follow = fan.get_by_test_id("follow")
    wait_for_text(fan, "follow", "^Follow$")
    follow.focus()
    fan.keyboard.press("Enter")
    wait_for_text(fan, "follow", "^Following$")
    status, body, _ = platform.request("GET", "/api/users/webfan/following")
    assert [user["username"] for user in body["data"]] == ["followme"]
    fan.goto("/")
    fan.get_by_test_id("tab-following").click()
    fan.locator(f"[data-stream-id='{stream['id']}']").wait_for(timeout=15_000)
    screenshot(fan, "directory-following-phone")
    # Signing out forgets the session and the refresh cookie.
    fan.get_by_test_id("sign-out").click()
    fan.get_by_test_id("nav-sign-in").wait_for()
    assert fan.evaluate("localStorage.getItem('sf.session')") is None
    cookies = {cookie["name"] for cookie in fan.context.cookies()}
    assert "sf_refresh" not in cookies and "sf_csrf" not in cookies
    assert pages.errors == []


def test_pages_work_behind_https(base_config: Any, browser: Browser, tmp_path: Path) -> None:
    node = Platform(base_config, tmp_path)
    cert, key = write_self_signed(tmp_path / "tls", "127.0.0.1")
    node.nginx_config = node.config.replace(tls_cert=str(cert), tls_key=str(key))
    node.ssl_context = ssl.create_default_context(cafile=str(cert))
    node.base_url = node.base_url.replace("http://", "https://")
    node.start()
    pages = Pages(browser, node.base_url, ignore_https_errors=True)
    try:
        status, _, headers = node.get("/")
        assert status == 200 and "max-age" in headers["Strict-Transport-Security"]
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        page = pages.new_page()
        sign_up(page, "tlsstar")
        cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
        assert cookies["sf_refresh"]["secure"] and cookies["sf_refresh"]["httpOnly"]
        assert cookies["sf_csrf"]["secure"] and not cookies["sf_csrf"]["httpOnly"]
        # A prepared stream: its watch page counts this viewer over wss://.
        status, stream, _ = node.request("POST", "/api/streams", {"title": "Soon"},
                                         token=access_token(page))
        assert status == 201, stream
        page.goto(f"/watch/{stream['id']}")
        wait_for_text(page, "viewers", r"^1 viewer$")
        wait_for_text(page, "state", "^OFFLINE$")
        assert page.evaluate("window.sfWatch.socketMessages") >= 1
        assert any(url.startswith("wss://") and "ticket=" in url for url in pages.urls)
        assert not [url for url in pages.urls if access_token(page) in url]
        page.evaluate("localStorage.removeItem('sf.session')")
        page.goto("/dashboard")
        wait_for_text(page, "nav-user", "^tlsstar$")
        screenshot(page, "dashboard-https")
        assert pages.errors == []
    finally:
        pages.close()
        node.stop()


# --- the account lifecycle (issue 21) --------------------------------------------------------

def test_verification_mail_link_confirms_the_address(
        platform: Platform, pages: Pages, mail_receiver: MailReceiver) -> None:
    """Sign up, send the link again from the dashboard (the first one stops working), open the
    mailed link: the page confirms the address and takes the token out of the address bar."""
    page = pages.new_page()
    sign_up(page, "webmail")
    address = "webmail@example.com"
    first = mail_to(mail_receiver, address, "Confirm your e-mail address")
    assert first.links[0].startswith(f"{platform.base_url}/account/verify-email#token=")
    wait_for_text(page, "email-state", "^webmail@example.com is not verified yet")
    page.get_by_test_id("resend-verification").click()
    wait_for_text(page, "email-status", "^Sent to webmail@example.com")
    second = mail_to(mail_receiver, address, "Confirm your e-mail address", count=2)
    page.goto(first.links[0])
    wait_for_text(page, "verify-status", "could not be confirmed")
    assert "invalid, expired or already used" in page.locator("#verify .error").inner_text()
    assert "token" not in page.url
    # The second link, pasted into the same tab (only the fragment differs: no page load).
    page.goto(second.links[0])
    wait_for_text(page, "verify-status", "is confirmed")
    assert page.url == f"{platform.base_url}/account/verify-email"
    screenshot(page, "account-verified")
    page.get_by_test_id("verify-dashboard").click()
    page.wait_for_url("**/dashboard")
    wait_for_text(page, "email-state", "^webmail@example.com is verified")
    assert page.get_by_test_id("resend-verification").is_hidden()
    assert unexpected(pages.errors, 422) == []
    assert len([error for error in pages.errors if "HTTP 422" in error]) == 1


def test_forgotten_password_reset_by_mail(
        platform: Platform, pages: Pages, mail_receiver: MailReceiver) -> None:
    """Forgot password on the sign-in form, the mailed link, a new password, signing in."""
    user = platform.register("webforgot")
    page = pages.new_page()
    page.goto("/login")
    page.get_by_test_id("forgot-password").click()
    page.wait_for_url("**/account/reset-password")
    page.get_by_test_id("reset-email").fill("webforgot@example.com")
    page.get_by_test_id("reset-request-submit").click()
    wait_for_text(page, "reset-request-status", "^If an account has this address")
    # An address no account has gets the same answer (and no mail).
    page.get_by_test_id("reset-email").fill("nobody-here@example.com")
    page.get_by_test_id("reset-request-submit").click()
    wait_for_text(page, "reset-request-status", "^If an account has this address")
    mail = mail_to(mail_receiver, "webforgot@example.com", "Reset your password")
    assert mail.links[0].startswith(f"{platform.base_url}/account/reset-password#token=")
    page.goto(mail.links[0])
    page.get_by_test_id("reset-password").fill("a new secret 42")
    assert "token" not in page.url
    page.get_by_test_id("reset-repeat").fill("a different one")
    page.get_by_test_id("reset-submit").click()
    page.locator("#reset-confirm .error").wait_for()
    assert "differ" in page.locator("#reset-confirm .error").inner_text()
    page.get_by_test_id("reset-repeat").fill("a new secret 42")
    page.get_by_test_id("reset-submit").click()
    page.wait_for_url("**/login?password=changed")
    wait_for_text(page, "login-notice", "password is changed")
    assert platform.request("GET", "/api/users/profile", token=user["token"])[0] == 401
    assert platform.request("POST", "/api/auth/login",
                            {"username": "webforgot", "password": PASSWORD})[0] == 401
    assert mail_receiver.to("nobody-here@example.com") == []
    page.get_by_test_id("login-name").fill("webforgot@example.com")
    page.get_by_test_id("login-password").fill("a new secret 42")
    page.get_by_test_id("login-submit").click()
    page.wait_for_url("**/dashboard")
    wait_for_text(page, "nav-user", "^webforgot$")
    assert pages.errors == []


def test_policy_banner_and_data_export_from_the_dashboard(platform: Platform, pages: Pages) -> None:
    """A user who accepted an older privacy policy sees the new one and accepts it; "Download
    my data" builds an export that becomes ready with a link to its ZIP."""
    user = platform.register("webexport")
    # What an operator's new policy version leaves behind: the last acceptance is an old one.
    # (On a thread of its own: Playwright's sync API keeps an event loop running on this one.)
    with ThreadPoolExecutor(1) as thread:
        thread.submit(fetch_value, platform.env["SF_DATABASE_URL"],
                      "INSERT INTO consents (user_id, purpose, version) "
                      "VALUES ($1, 'privacy_policy', '1999-01-01') RETURNING id",
                      user["user"]["id"]).result()
    page = pages.new_page()
    sign_in(page, "webexport")
    page.wait_for_url("**/dashboard")
    banner = page.get_by_test_id("policy-banner")
    banner.wait_for(state="visible")
    _, policy, _ = platform.request("GET", "/api/legal/privacy-policy")
    wait_for_text(page, "policy-banner", "# Privacy policy")
    assert policy["version"] in banner.inner_text()
    page.get_by_test_id("accept-policy").click()
    banner.wait_for(state="hidden")
    _, profile, _ = platform.request("GET", "/api/users/profile", token=access_token(page))
    assert profile["privacy_policy_accepted"] == profile["privacy_policy_current"]

    page.get_by_test_id("request-export").click()
    ready = page.locator("#exports li[data-status=ready]")
    ready.wait_for(timeout=30_000)
    link = ready.get_by_test_id("export-download").get_attribute("href")
    assert link and link.startswith("/api/v1/users/profile/exports/")
    screenshot(page, "dashboard-account")
    status, body, headers = platform.get(link)
    assert status == 200 and body.startswith(b"PK") and headers["Content-Type"] == "application/zip"
    assert pages.errors == []


def test_delete_the_account_then_restore_it_by_signing_in(platform: Platform, pages: Pages) -> None:
    """Delete my account (password, then a confirm click): signed out, told when the data is
    erased; signing in then is refused with the restore option, and restoring keeps it."""
    platform.register("webleaving")
    page = pages.new_page()
    sign_in(page, "webleaving")
    page.wait_for_url("**/dashboard")
    page.get_by_test_id("delete-start").click()
    confirm = page.get_by_test_id("delete-confirm")
    page.get_by_test_id("delete-password").fill("not my password")
    confirm.click()
    wait_for_text(page, "delete-confirm", "^Click again")
    confirm.click()
    page.locator("#delete-form .error").wait_for()
    assert platform.request("GET", "/api/users/webleaving")[0] == 200
    page.get_by_test_id("delete-password").fill(PASSWORD)
    confirm.click()
    assert platform.request("GET", "/api/users/webleaving")[0] == 200  # not before the confirm
    confirm.click()
    page.wait_for_url("**/login?deleted=*")
    wait_for_text(page, "login-notice", "erased after")
    assert page.get_by_test_id("login-restore").is_visible()
    assert page.evaluate("localStorage.getItem('sf.session')") is None
    assert "sf_csrf" not in {cookie["name"] for cookie in page.context.cookies()}
    assert platform.request("GET", "/api/users/webleaving")[0] == 404
    screenshot(page, "login-deleted")
    # Another browser, not told: the refusal itself offers the restore.
    other = pages.new_page()
    sign_in(other, "webleaving")
    other.locator("#sign-in .error").wait_for()
    assert "erasure" in other.locator("#sign-in .error").inner_text()
    other.get_by_test_id("login-restore").check()
    other.get_by_test_id("login-submit").click()
    other.wait_for_url("**/dashboard")
    wait_for_text(other, "nav-user", "^webleaving$")
    assert platform.request("GET", "/api/users/webleaving")[0] == 200
    assert unexpected(pages.errors, 403, 422) == []


# --- live chat (issue 22) ---------------------------------------------------------------------

XSS_CHAT = '<img src=x onerror="window.__xss=4"><script>window.__xss=5</script> & <b>hi</b>'


def signed_in(pages: Pages, account: dict[str, Any], viewport: tuple[int, int] = (1280, 800)) -> Page:
    """A browser signed in as a `platform.register` account, without the sign-in form (the
    sign-in tests cover it): its session stored where api.js keeps it."""
    page = pages.new_page(viewport)
    page.goto("/login")
    page.evaluate("""(account) => localStorage.setItem('sf.session', JSON.stringify({
        access_token: account.token, expires_at: Date.now() + 10 * 60 * 1000, user: account.user}))""",
                  account)
    return page


def open_chat(page: Page, stream_id: int) -> None:
    """The watch page with its live socket open and the chat's settings received."""
    page.goto(f"/watch/{stream_id}")
    page.wait_for_function("() => window.sfChat && window.sfChat.connected && window.sfChat.settings",
                           timeout=30_000)


def send_chat(page: Page, text: str) -> None:
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("chat-input").press("Enter")


def chat_texts(page: Page) -> list[str]:
    return page.get_by_test_id("chat-text").all_text_contents()


def wait_for_chat(page: Page, text: str, present: bool = True) -> None:
    page.wait_for_function(
        "([text, present]) => [...document.querySelectorAll('[data-testid=chat-text]')]"
        ".some((node) => node.textContent === text) === present", arg=[text, present],
        timeout=15_000)


def chat_message(page: Page, text: str) -> Any:
    return page.locator("[data-testid=chat-message]", has=page.locator(
        "[data-testid=chat-text]", has_text=text))


def test_chat_send_read_moderate_and_settings(platform: Platform, pages: Pages) -> None:
    """The streamer appoints a moderator in the dashboard; on one live stream viewer A's
    messages reach the moderator B (HTML as text) and a late anonymous reader (history); the
    streamer deletes one, B times A out (A's messages vanish, A's send gets the notice); chat
    settings saved in the dashboard show on the watch pages; the timeout is lifted there.
    security.md#chat-html: a message of markup stays text on every page that shows it."""
    owner = platform.register("chathost")
    chatter = platform.register("chatter")
    moderator_account = platform.register("chatmod")
    platform.publish(owner["key"], size="320x180", rate=15, seconds=240)
    stream = wait_for(lambda: platform.live_stream_of("chathost"), 30, what="the stream to go live")
    sid = stream["id"]
    # The dashboard checks the transcoder's playlists: before they exist that is a 404.
    wait_for(lambda: hls_ready(platform, sid), 60, what="the HLS ladder")

    host = signed_in(pages, owner)
    host.goto("/dashboard")
    host.get_by_test_id("moderator-username").fill("chatmod")
    host.get_by_test_id("moderator-add").click()
    host.locator("[data-testid=moderator][data-username=chatmod]").wait_for()
    moderator = signed_in(pages, moderator_account)  # B
    open_chat(moderator, sid)
    sender = signed_in(pages, chatter)  # A
    open_chat(sender, sid)
    assert sender.get_by_test_id("chat-sign-in").is_hidden()
    open_chat(host, sid)

    send_chat(sender, "hello from A")
    wait_for_chat(moderator, "hello from A")
    wait_for_chat(host, "hello from A")
    sender.wait_for_function("() => document.querySelector('#chat-input').value === ''")  # acked
    assert moderator.get_by_test_id("chat-author").last.text_content() == "chatter"
    send_chat(sender, XSS_CHAT)
    wait_for_chat(moderator, XSS_CHAT)
    assert moderator.locator("#chat-messages img, #chat-messages script, #chat-messages b").count() == 0
    assert sender.locator("[data-testid=chat-delete]").count() == 0  # no moderation for viewers
    # An anonymous page joining now gets the history, reads only, and moderates nothing.
    reader = pages.new_page(viewport=(390, 844))
    open_chat(reader, sid)
    wait_for_chat(reader, XSS_CHAT)
    assert chat_texts(reader)[-2:] == ["hello from A", XSS_CHAT]
    reader.get_by_test_id("chat-sign-in").wait_for(state="visible")
    assert reader.get_by_test_id("chat-form").is_hidden()
    assert reader.locator("[data-testid=chat-delete]").count() == 0
    screenshot(reader, "watch-chat-phone")

    # The streamer deletes the first message: gone for everyone.
    chat_message(host, "hello from A").get_by_test_id("chat-delete").click()
    wait_for_chat(reader, "hello from A", present=False)
    wait_for_chat(sender, "hello from A", present=False)
    # The moderator times A out: every message of A vanishes, and A's next send is refused.
    screenshot(moderator, "watch-chat-moderator")
    chat_message(moderator, "& <b>hi</b>").get_by_test_id("chat-timeout").click()
    wait_for_chat(reader, XSS_CHAT, present=False)
    wait_for_chat(sender, XSS_CHAT, present=False)
    send_chat(sender, "am I still here?")
    sender.wait_for_function(
        "() => document.querySelector('[data-testid=chat-notice]').dataset.code === 'timed_out'")
    wait_for_text(sender, "chat-notice", "timed out of this chat for (9|10) min")
    assert "am I still here?" not in chat_texts(reader)
    screenshot(sender, "watch-chat-timed-out")

    # The dashboard: the timeout is listed, settings change, and the watch pages show them.
    platform.register("chatextra")
    for _ in range(10):  # a moderation log of more than one page
        for method in ("PUT", "DELETE"):
            platform.request(method, "/api/channel/moderators/chatextra", token=owner["token"])
    host.goto("/dashboard")
    host.locator("[data-testid=ban][data-username=chatter]").wait_for()
    settings = host.locator("#chat-settings-form")
    settings.get_by_test_id("chat-slow-mode").fill("30")
    settings.get_by_test_id("chat-followers-only").fill("10")
    settings.get_by_test_id("chat-blocked-terms").fill("spoiler\nSPAM")
    settings.get_by_test_id("chat-settings-save").click()
    wait_for_status(host, "#chat-settings-form", "Saved.")
    for page in (reader, moderator):
        wait_for_text(page, "chat-settings", "Slow mode: one message every 30 s")
        wait_for_text(page, "chat-settings", r"Followers-only \(followed for 10 min")
    status, saved, _ = platform.request("GET", "/api/channel/chat/settings", token=owner["token"])
    assert status == 200 and saved["slow_mode_seconds"] == 30
    assert saved["blocked_terms"] == ["spoiler", "SPAM"]
    wait_for_text(host, "moderation-log", "changed the chat settings")
    assert host.get_by_test_id("moderation-entry").count() == 20
    host.get_by_test_id("moderation-log-more").click()  # the older page
    wait_for_text(host, "moderation-log", "chatmod timed out chatter for 10 min")
    log = host.get_by_test_id("moderation-log").text_content() or ""
    assert "chathost deleted a message of chatter" in log and "made moderator chatmod" in log
    assert host.get_by_test_id("moderation-log-more").is_hidden()
    # Lifting the timeout from the dashboard.
    host.locator("[data-testid=ban][data-username=chatter]").get_by_test_id("ban-lift").click()
    host.locator("[data-testid=ban][data-username=chatter]").wait_for(state="detached")
    assert platform.request("GET", "/api/channel/bans", token=owner["token"])[1]["data"] == []
    screenshot(host, "dashboard-chat")
    for page in (reader, sender, host, moderator):
        assert_no_script_ran(page)
    assert pages.errors == []
