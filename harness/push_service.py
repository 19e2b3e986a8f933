"""A real Web Push service for tests, doing what a browser vendor's does (RFC 8030, 8291,
8292): it hands out subscriptions the way a browser makes them (a P-256 key pair and a 16-byte
auth secret of its own, bound to the application server key the page subscribed with), takes
POST /push/<token>, checks the VAPID `Authorization: vapid t=<JWT>, k=<key>` (ES256 signature
by k, k the key the subscription is bound to, `aud` its own origin, `exp` in the future and at
most 24 h away, `sub` present; 401 when missing or malformed, 403 when wrong), decrypts the
aes128gcm body with the subscription's private key and auth secret, and keeps the plaintext.
An endpoint can be told to answer 404 or 410 (the browser unsubscribed) or anything else.

    service = PushService().start()
    browser = service.subscribe(application_server_key=public_key_from_sf)
    ...POST browser.subscription_json to SF...
    message = await service.wait_for(browser.token)
    json.loads(message.plaintext)

It runs on its own thread and event loop, on a port reserved for this process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
import tornado.httpserver
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.ports import release_ports, reserve_ports

__all__ = ["BrowserSubscription", "PushMessage", "PushService"]

MAX_TOKEN_SECONDS = 24 * 3600
MAX_MESSAGE_BYTES = 4096  # RFC 8030 section 7.2: a push service must take at least this


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


@dataclass
class BrowserSubscription:
    """One subscription as a browser holds it: the endpoint and the keys only it knows."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: bytes  # the VAPID public key (65 bytes) pushes must be signed by

    @property
    def p256dh(self) -> str:
        return b64url(public_point(self.private_key))

    @property
    def subscription_json(self) -> dict[str, Any]:
        """What `PushSubscription.toJSON()` gives in a browser."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)}}


@dataclass
class PushMessage:
    """A push the service took: the decrypted payload and what came with it."""

    token: str
    plaintext: bytes
    claims: dict[str, Any]
    vapid_key: str  # the `k` of the Authorization header
    headers: dict[str, str]
    received_at: float = field(default_factory=time.time)

    @property
    def json(self) -> Any:
        return json.loads(self.plaintext)


@dataclass
class Refusal:
    """A request the service refused, and why (tests assert on it)."""

    token: str
    status: int
    reason: str


class _PushHandler(tornado.web.RequestHandler):
    def initialize(self, service: PushService) -> None:
        self.service = service

    def check_xsrf_cookie(self) -> None:
        return None

    def post(self, token: str) -> None:
        status, reason = self.service.handle(token, self.request)
        if status >= 300:
            self.service.refused(token, status, reason)
        self.set_status(status)
        if status == 201:
            self.set_header("Location", f"{self.service.origin}/message/{secrets.token_hex(8)}")
        self.finish(reason if status >= 300 else b"")


class PushService:
    """The push service (see the module); thread-safe to read from the tests' loop."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = reserve_ports(1)[0]
        self.origin = f"http://{host}:{self.port}"
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.messages: list[PushMessage] = []
        self.refusals: list[Refusal] = []
        self.requests = 0
        self._answers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None

    # --- as a browser ------------------------------------------------------------------------

    def subscribe(self, application_server_key: str) -> BrowserSubscription:
        """A new subscription bound to `application_server_key` (base64url, what the page
        passed to `pushManager.subscribe`), with keys made as a browser makes them."""
        token = secrets.token_urlsafe(24)
        subscription = BrowserSubscription(
            token=token, endpoint=f"{self.origin}/push/{token}",
            private_key=ec.generate_private_key(ec.SECP256R1()), auth=secrets.token_bytes(16),
            application_server_key=from_b64url(application_server_key))
        with self._lock:
            self.subscriptions[token] = subscription
        return subscription

    def answer(self, token: str, status: int | None) -> None:
        """Answer pushes to this endpoint with `status` (404, 410, 500, …) from now on; None:
        take them again."""
        with self._lock:
            if status is None:
                self._answers.pop(token, None)
            else:
                self._answers[token] = status

    def received(self, token: str | None = None) -> list[PushMessage]:
        with self._lock:
            return [m for m in self.messages if token is None or m.token == token]

    def refused(self, token: str, status: int, reason: str) -> None:
        with self._lock:
            self.refusals.append(Refusal(token, status, reason))

    async def wait_for(self, token: str, count: int = 1, timeout: float = 10.0) -> PushMessage:
        """The `count`-th push taken for `token`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.received(token)
            if len(messages) >= count:
                return messages[count - 1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no push #{count} to {token} within {timeout} s "
                                   f"({len(messages)} arrived; refused: {self.refusals})")
            await asyncio.sleep(0.02)

    # --- as the push service -------------------------------------------------------------------

    def handle(self, token: str, request: tornado.httpserver.HTTPRequest) -> tuple[int, str]:
        """(status, reason) for one POST to /push/<token>; a 201 keeps the message."""
        with self._lock:
            self.requests += 1
            subscription = self.subscriptions.get(token)
            forced = self._answers.get(token)
        if subscription is None:
            return 404, "no such subscription"
        header = request.headers.get("Authorization", "")
        parts = self._vapid_parts(header)
        if parts is None:
            return 401, "missing or malformed vapid authorization"
        token_text, key_text = parts
        try:
            key_bytes = from_b64url(key_text)
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_bytes)
        except (ValueError, binascii.Error):
            return 401, "k is not a P-256 public key"
        if key_bytes != subscription.application_server_key:
            return 403, "k is not the key the subscription was made with"
        try:
            claims = jwt.decode(token_text, public_key, algorithms=["ES256"],
                                audience=self.origin, options={"require": ["exp", "aud", "sub"]})
        except jwt.PyJWTError as error:
            return 403, f"invalid token: {error}"
        if claims["exp"] > time.time() + MAX_TOKEN_SECONDS:
            return 403, "exp more than 24 hours ahead"
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            return 403, "sub is no mailto: or https: contact"
        if forced is not None:
            return forced, "told to answer this"
        if "TTL" not in request.headers or not request.headers["TTL"].isdigit():
            return 400, "TTL header missing"
        if request.headers.get("Urgency", "normal") not in ("very-low", "low", "normal", "high"):
            return 400, "bad Urgency"
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return 415, "content encoding is not aes128gcm"
        if len(request.body) > MAX_MESSAGE_BYTES:
            return 413, "message too large"
        try:
            plaintext = http_ece.decrypt(request.body, private_key=subscription.private_key,
                                         auth_secret=subscription.auth, version="aes128gcm")
        except Exception as error:  # http_ece raises several kinds on a bad message
            return 400, f"cannot decrypt: {type(error).__name__}"
        message = PushMessage(token, plaintext, claims, key_text, dict(request.headers))
        with self._lock:
            self.messages.append(message)
        return 201, "created"

    @staticmethod
    def _vapid_parts(header: str) -> tuple[str, str] | None:
        """(t, k) of `vapid t=…, k=…` (RFC 8292 section 3), else None."""
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            return None
        values: dict[str, str] = {}
        for part in params.split(","):
            name, sep, value = part.strip().partition("=")
            if sep:
                values[name.strip()] = value.strip()
        if not values.get("t") or not values.get("k"):
            return None
        return values["t"], values["k"]

    # --- running --------------------------------------------------------------------------------

    def start(self) -> PushService:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            app = tornado.web.Application([(r"/push/([A-Za-z0-9_-]+)", _PushHandler,
                                            {"service": self})])
            self._server = tornado.httpserver.HTTPServer(app, max_body_size=1 << 20)
            self._server.listen(self.port, self.host)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(self._server.close_all_connections())
            loop.close()

        self._thread = threading.Thread(target=run, name="push-service", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the push service did not start")
        return self

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            server, loop = self._server, self._loop
            if server is not None:
                loop.call_soon_threadsafe(server.stop)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = self._loop = None
        release_ports([self.port])
