"""Web Push (RFC 8030, 8291, 8292): browsers subscribe with the server's VAPID public key, and
`PushSender` encrypts a payload to each subscription of a batch of users and posts it to the
browser vendor's push service, signed with the VAPID key.

Every push goes through one guarded aiohttp session (sf.outbound: public addresses only, as
resolved at send time, no redirects, no proxies, short timeouts, answers read up to a cap),
because an endpoint is a URL a user chose. Encrypting one push costs about 0.15 ms of CPU on
the loop (ECDH, HKDF, AES-GCM; measured with pywebpush 2.5); sends are bounded by a semaphore
(`SF_PUSH_CONCURRENCY`), so the loop never runs more than that many encryptions in a row
(~7.5 ms at 50) between two polls, and each send is time-limited. The VAPID token is signed
once per push service origin and reused for hours.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from pywebpush import WebPusher, WebPushException

from sf.config import Config, parse_vapid_key
from sf.db import push as push_db
from sf.errors import validation_error
from sf.outbound import (
    BlockedAddress,
    check_destination,
    guarded_session,
    read_capped,
    request_options,
    vet,
)

log = logging.getLogger("sf.push")

# What push services answer fits in a few KiB; a hostile endpoint's endless body is cut here.
PUSH_RESPONSE_CAP_BYTES = 4096
# RFC 8291: a push message carries at most 4096 bytes; the aes128gcm header and tag take 86
# and each record needs its padding delimiter.
MAX_PAYLOAD_BYTES = 3993
VAPID_TOKEN_SECONDS = 12 * 3600  # a push service refuses tokens that live over 24 h
VAPID_RENEW_SECONDS = 3600  # sign again when a cached token has less than this left
VAPID_CACHE_ORIGINS = 1000


@dataclass
class PushReport:
    """What one `send_to_users` did: subscriptions found, pushes the push services took,
    subscriptions deleted because their push service says they are gone (404/410) or because
    their endpoint resolves to an address SF never sends to, and pushes that failed
    otherwise (refused, timed out, unreachable: logged, not retried)."""

    subscriptions: int = 0
    delivered: int = 0
    removed: int = 0
    failed: int = 0

    def add(self, other: PushReport) -> None:
        self.subscriptions += other.subscriptions
        self.delivered += other.delivered
        self.removed += other.removed
        self.failed += other.failed


@dataclass(frozen=True)
class _PushAnswer:
    """A push service's answer as WebPusher reads it (`status`, `text()`), body capped."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    async def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _GuardedPoster:
    """What WebPusher posts through: the guarded session, never following a redirect (a
    redirect to an IP literal would skip the resolver's check), the answer read up to a cap
    and the connection released at once."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post(self, url: str, *, timeout: aiohttp.ClientTimeout, data: bytes | None,
                   headers: Mapping[str, str]) -> _PushAnswer:
        async with self.session.post(url, data=data, headers=dict(headers), timeout=timeout,
                                     **request_options()) as response:
            body = await read_capped(response, PUSH_RESPONSE_CAP_BYTES)
            return _PushAnswer(response.status, response.headers, body)


def endpoint_origin(endpoint: str) -> str:
    """`scheme://host[:port]` of an endpoint: the VAPID audience, and what lists show."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class PushSender:
    """Sends Web Pushes to every subscription of a set of users (one per API process; the
    go-live fan-out calls it for the followers whose `push` setting is on)."""

    def __init__(self, config: Config, db: asyncpg.Pool) -> None:
        self.config = config
        self.db = db
        self.ttl = config.push_ttl_seconds
        self.timeout = config.push_timeout_seconds
        self._vapid = Vapid(private_key=parse_vapid_key(config.vapid_private_key))
        point = self._vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.public_key = base64.urlsafe_b64encode(point).rstrip(b"=").decode()
        self._slots = asyncio.Semaphore(config.push_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}

    def _poster(self) -> _GuardedPoster:
        """The one guarded session, opened on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            self._session = guarded_session(self.config.outbound_allowed_networks,
                                            nameservers=self.config.outbound_nameservers,
                                            timeout=self.timeout,
                                            connections=self.config.push_concurrency)
        return _GuardedPoster(self._session)

    async def close(self) -> None:
        """Close the session (Services stop and close; idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _vapid_headers(self, origin: str) -> dict[str, str]:
        """`Authorization: vapid t=<ES256 JWT>, k=<public key>` for one push service, reused
        while it has over an hour left."""
        now = time.time()
        cached = self._tokens.get(origin)
        if cached is not None and cached[0] - now > VAPID_RENEW_SECONDS:
            return cached[1]
        expires = int(now) + VAPID_TOKEN_SECONDS
        headers = cast(dict[str, str], self._vapid.sign(
            {"sub": self.config.vapid_subject, "aud": origin, "exp": expires}))
        if len(self._tokens) >= VAPID_CACHE_ORIGINS:
            self._tokens.clear()
        self._tokens[origin] = (float(expires), headers)
        return headers

    async def send_to_user(self, user_id: int, payload: Mapping[str, Any]) -> PushReport:
        """`send_to_users` for one user."""
        return await self.send_to_users([user_id], payload)

    async def send_to_users(self, user_ids: Sequence[int],
                            payload: Mapping[str, Any]) -> PushReport:
        """Push `payload` (JSON, at most MAX_PAYLOAD_BYTES encoded) to every live subscription
        of these users, all at once within the concurrency bound; returns what happened.
        Gone subscriptions are deleted; nothing is retried."""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"a push payload is at most {MAX_PAYLOAD_BYTES} bytes, "
                             f"this one {len(data)}")
        report = PushReport()
        if not user_ids:
            return report
        subscriptions = await push_db.subscriptions_of_users(self.db, user_ids)
        report.subscriptions = len(subscriptions)
        if not subscriptions:
            return report
        poster = self._poster()
        outcomes = await asyncio.gather(*(self._send(poster, subscription, data)
                                          for subscription in subscriptions))
        delivered = [s.id for s, outcome in zip(subscriptions, outcomes, strict=True)
                     if outcome == "delivered"]
        gone = [s.id for s, outcome in zip(subscriptions, outcomes, strict=True)
                if outcome == "gone"]
        report.delivered, report.failed = len(delivered), outcomes.count("failed")
        report.removed = await push_db.delete_subscriptions(self.db, gone)
        await push_db.mark_delivered(self.db, delivered)
        return report

    async def _send(self, poster: _GuardedPoster, subscription: push_db.PushSubscription,
                    data: bytes) -> str:
        """One push: "delivered", "gone" (delete it) or "failed"."""
        origin = endpoint_origin(subscription.endpoint)
        try:
            # aiohttp connects to an IP literal without asking the resolver: the URL is checked
            # here too, each time (the operator's allowance may have been withdrawn).
            check_destination(subscription.endpoint, self.config.outbound_allowed_networks)
        except (BlockedAddress, ValueError) as error:
            log.warning("push subscription %d: SF does not send to %s (%s); deleted",
                        subscription.id, origin, error)
            return "gone"
        async with self._slots:
            try:
                pusher = WebPusher({"endpoint": subscription.endpoint,
                                    "keys": {"p256dh": subscription.p256dh,
                                             "auth": subscription.auth}},
                                   aiohttp_session=poster)
                headers = {**self._vapid_headers(origin), "Urgency": "high"}
                async with asyncio.timeout(self.timeout):
                    answer = await pusher.send_async(
                        data, headers=headers, ttl=self.ttl,
                        timeout=aiohttp.ClientTimeout(total=self.timeout))
            except BlockedAddress:
                log.warning("push subscription %d: %s resolves to a non-public address; "
                            "deleted", subscription.id, origin)
                return "gone"
            except (aiohttp.ClientError, TimeoutError, OSError, WebPushException,
                    ValueError) as error:
                log.warning("push to subscription %d at %s failed: %s", subscription.id,
                            origin, type(error).__name__)
                return "failed"
        status = answer.status
        if 200 <= status < 300:
            return "delivered"
        if status in (404, 410):
            log.info("push subscription %d is gone (%d from %s); deleted", subscription.id,
                     status, origin)
            return "gone"
        log.warning("push to subscription %d refused by %s: %d%s", subscription.id, origin,
                    status, f" (Retry-After {answer.headers.get('Retry-After')})"
                    if answer.headers.get("Retry-After") else "")
        return "failed"


@dataclass(frozen=True)
class SubscriptionStored:
    id: int
    created: bool


class PushSubscriptions:
    """A user's Web Push subscriptions: subscribe (the endpoint checked against sf.outbound's
    rules first), list, unsubscribe."""

    def __init__(self, config: Config, db: asyncpg.Pool) -> None:
        self.config = config
        self.db = db

    async def check_endpoint(self, endpoint: str) -> None:
        """A 422 for an endpoint SF would never send to (`sf.outbound.vet`, as webhooks): not
        https (plain http only to an address the operator allowed), credentials in it, or a
        literal non-public address or a name that does not resolve to public addresses only,
        now (the check runs again at every send)."""
        try:
            await vet(endpoint, self.config.outbound_allowed_networks,
                      self.config.outbound_nameservers)
        except ValueError as error:
            raise validation_error("endpoint", str(error)) from None

    async def subscribe(self, user_id: int, endpoint: str, p256dh: str, auth: str,
                        expiration_ms: int | None) -> SubscriptionStored:
        """Store a browser's subscription for the user (the same endpoint again: its id)."""
        await self.check_endpoint(endpoint)
        expires_at = (None if expiration_ms is None
                      else datetime.fromtimestamp(expiration_ms / 1000, UTC))
        subscription_id, created = await push_db.subscribe(self.db, user_id, endpoint, p256dh,
                                                           auth, expires_at)
        return SubscriptionStored(subscription_id, created)

    async def list(self, user_id: int) -> list[push_db.PushSubscription]:
        return await push_db.subscriptions_of(self.db, user_id)

    async def unsubscribe(self, user_id: int, subscription_id: int) -> None:
        await push_db.unsubscribe(self.db, user_id, subscription_id)
