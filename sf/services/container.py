"""The services one node holds (pool, Redis, sessions, limits, use cases), built once at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from sf.alerts import AlertWebhook, install_alert_webhook, remove_alert_webhook
from sf.cache import Cache
from sf.config import Config
from sf.db.pool import create_pool
from sf.media.images import ImageWorker
from sf.ratelimit import LoginThrottle, RateLimiter
from sf.redis_client import is_sentinel_url, service_client, watch_primary
from sf.schemas import StreamSchema, UserPrivateSchema
from sf.security import EmailCipher, PasswordHasher, StreamKeyCipher, TokenService
from sf.services.account_mail import AccountMailService
from sf.services.accounts import AccountService
from sf.services.allowed_viewers import AllowedViewerService
from sf.services.categories import CategoryService
from sf.services.chat import ChatService
from sf.services.chat_moderation import ChatModerationService
from sf.services.consents import ConsentService, load_privacy_policy
from sf.services.erasure import ErasureService
from sf.services.events import EventBus
from sf.services.exports import ExportService
from sf.services.follows import FollowService
from sf.services.ingest import IngestService
from sf.services.jobs import Job, JobRunner
from sf.services.mail import MailSender
from sf.services.media_nodes import MediaNodeRegistry
from sf.services.notifications import NotificationService
from sf.services.publishing import PublishingService
from sf.services.push import PushSender, PushSubscriptions
from sf.services.retention import AddressRetention
from sf.services.sessions import SessionStore, TicketStore
from sf.services.statistics import StatisticsService
from sf.services.stream_keys import StreamKeyService
from sf.services.streams import StreamService
from sf.services.viewer_counts import ViewerCounts
from sf.services.viewers import ViewerHub
from sf.services.webhooks import WebhookEvents, WebhookSender, WebhookService

log = logging.getLogger("sf.services")


class Cleanups:
    """What a node releases when it shuts down, as aiohttp's `CleanupContext` does it: each
    part registers its cleanup as it is opened, and `run` calls them in the reverse order,
    every one even when another fails (a pool must not stay open because a thread pool's
    shutdown raised); each failure is logged, and the first is raised once all have run."""

    def __init__(self) -> None:
        self._cleanups: list[tuple[str, Callable[[], Any]]] = []

    def add(self, name: str, cleanup: Callable[[], Any]) -> None:
        """Call `cleanup` (a function, or one returning an awaitable) at shutdown, before
        those added earlier; `name` says what it releases, in the log."""
        self._cleanups.append((name, cleanup))

    async def run(self) -> None:
        """Run every cleanup, newest first (each at most once)."""
        first: Exception | None = None
        while self._cleanups:
            name, cleanup = self._cleanups.pop()
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result
            except Exception as error:
                log.error("closing %s failed", name, exc_info=True)
                if first is None:
                    first = error
        if first is not None:
            raise first


@dataclass
class RequestDrain:
    """The HTTP requests in progress on this process, and whether it is shutting down.

    While it drains, the process still serves the requests that reach it on connections it
    already has, but every response asks the proxy to close its connection (`Connection:
    close`), so the proxy's idle connections run out and it goes to the other nodes.
    """

    inflight: int = 0
    draining: bool = False
    last_started: float = 0.0

    def started(self) -> None:
        self.inflight += 1
        self.last_started = time.monotonic()

    def ended(self) -> None:
        self.inflight -= 1

    async def wait(self, grace: float, quiet: float = 1.0) -> None:
        """Drain: return once no request is in progress and none has started for `quiet`
        seconds, or after `grace` seconds at most."""
        self.draining = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.inflight <= 0 and time.monotonic() - self.last_started >= quiet:
                return
            await asyncio.sleep(0.05)


@dataclass(kw_only=True)
class Services:
    """Everything handlers reach through `self.services`; owned by the loop thread."""

    config: Config
    db: asyncpg.Pool
    redis: Redis
    tokens: TokenService
    hasher: PasswordHasher
    sessions: SessionStore
    limiter: RateLimiter
    cipher: StreamKeyCipher
    email_cipher: EmailCipher  # e-mail addresses at rest, with the stream keys' key ring
    cache: Cache
    images: ImageWorker
    events: EventBus
    streams: StreamService
    stream_keys: StreamKeyService
    allowed_viewers: AllowedViewerService
    categories: CategoryService
    chat_moderation: ChatModerationService  # moderators, bans, chat settings, the log
    publishing: PublishingService
    accounts: AccountService
    consents: ConsentService  # the privacy policy and its acceptances
    mail: MailSender  # delivers the mail outbox (every API process runs one)
    account_mail: AccountMailService
    erasure: ErasureService  # account deletion, restore within the grace, purge_due (the jobs)
    statistics: StatisticsService  # live totals onto streams, samples (leader node only)
    stream_schema: StreamSchema
    user_private: UserPrivateSchema  # the own profile, with the current policy version
    tickets: TicketStore
    counts: ViewerCounts
    viewers: ViewerHub
    chat: ChatService  # live chat: sends, one publish each, this process's fan-out
    notifications: NotificationService  # lists, settings, go-live fan-out, /ws/notifications
    media_nodes: MediaNodeRegistry  # which media nodes are alive (read by any node)
    ingest: IngestService | None  # only on a node next to an nginx-rtmp
    exports: ExportService  # personal data exports (built in the background of this node)
    push: PushSender  # Web Push to a batch of users' browsers (one guarded HTTP session)
    push_subscriptions: PushSubscriptions  # browsers subscribing, listing, unsubscribing
    follows: FollowService
    webhooks: WebhookService  # the owners' webhooks, and the events queued for them
    webhook_sender: WebhookSender  # delivers the webhook queue (every API process runs one)
    jobs: JobRunner  # scheduled jobs, one node at a time (a Redis leader lock)
    cleanups: Cleanups  # run by `close`: the pool, Redis, the gate's connection, threads
    drain: RequestDrain = field(default_factory=RequestDrain)
    alerts: AlertWebhook | None = None  # ERROR events → SF_ALERT_WEBHOOK_URL, while started

    async def start(self) -> None:
        """Start the background parts, in order (stream events first: ingest relies on them)."""
        config = self.config
        self.alerts = install_alert_webhook(
            config.alert_webhook_url, node=config.node_id,
            dedup_seconds=config.alert_webhook_dedup_seconds,
            max_per_minute=config.alert_webhook_max_per_minute)
        await self.events.start()
        await self.mail.start()
        await self.webhook_sender.start()
        await self.statistics.start()
        await self.viewers.start()
        await self.chat.start()
        await self.notifications.start()
        if self.ingest is not None:
            await self.ingest.start()
        await self.jobs.start()

    async def stop(self) -> None:
        """Stop the background parts in the reverse order of `start`."""
        try:
            await self.jobs.stop()
            await self.exports.stop()
            if self.ingest is not None:
                await self.ingest.stop()
        finally:
            try:
                await self.notifications.stop()
                await self.chat.stop()
                await self.viewers.stop()
            finally:
                await self.statistics.stop()  # never raises
                await self.webhook_sender.stop()
                await self.mail.stop()
                await self.push.close()
                await self.events.stop()
                alerts, self.alerts = self.alerts, None
                # Off the loop: it gives queued alerts a few seconds to go out.
                await asyncio.get_running_loop().run_in_executor(None, remove_alert_webhook,
                                                                 alerts)

    async def close(self) -> None:
        """Release connections and threads (after `stop`), all of them even when one part
        fails (`Cleanups.run`: the first failure is raised after the rest ran)."""
        await self.cleanups.run()


async def start_services(config: Config, *, database_url: str | None = None,
                         ingest: bool = False, ingest_owner: bool = True) -> Services:
    """Connect to PostgreSQL and Redis and wire the services together.

    `ingest=True` on a node that runs nginx-rtmp (`sf serve`, `sf node`): it then owns the
    StreamActors of the streams published to it — in its ingest process (`ingest_owner`); the
    node's other processes forward nginx-rtmp's callbacks there and drop publishers of the
    streams they end. What it opened is closed again when it fails part way.
    """
    cleanups = Cleanups()
    db = await create_pool(config, database_url)
    cleanups.add("the PostgreSQL pool", db.close)
    try:
        return await _wire(config, db, cleanups, ingest=ingest, ingest_owner=ingest_owner)
    except BaseException:
        with contextlib.suppress(Exception):  # each failure is logged; the first one counts
            await cleanups.run()
        raise


async def _wire(config: Config, db: asyncpg.Pool, cleanups: Cleanups, *, ingest: bool,
                ingest_owner: bool) -> Services:
    """`start_services` once the pool is open: Redis and the services over both."""
    redis = service_client(config.redis_url)
    cleanups.add("the Redis client", redis.aclose)
    await redis.ping()
    limiter = RateLimiter(redis)
    cleanups.add("the request gate's Redis connection", limiter.close)
    primary_watch = watch_primary(redis, [limiter.close])
    if primary_watch is not None:  # a Sentinel group's primary: followed when it moves
        cleanups.add("the Redis primary watch", primary_watch.stop)
    tokens = TokenService(config)
    hasher = PasswordHasher(config.bcrypt_rounds, workers=max(1, os.cpu_count() or 1),
                            max_pending=config.password_checks_max_pending)
    cleanups.add("the password hashing threads", lambda: hasher.executor.shutdown(wait=False))
    sessions = SessionStore(redis, tokens, replicated=is_sentinel_url(config.redis_url))
    cipher = StreamKeyCipher(config.stream_key_encryption_keys, config.stream_key_lookup_secret)
    email_cipher = EmailCipher.of(config)
    cache = Cache(redis, config.cache_ttl)
    images = ImageWorker(config.media_dir, config.avatar_size, config.avatar_max_pixels)
    cleanups.add("the image threads", images.close)
    events = EventBus(redis, config.node_id)
    streams = StreamService(db, cache, listeners=[events])
    stream_keys = StreamKeyService(db, cipher, streams)
    throttle = LoginThrottle(redis, config.rate_limit_auth_account,
                             config.rate_limit_auth_account_ceiling, config.rate_limit_window)
    consents = ConsentService(db, cache, load_privacy_policy(config.privacy_policy_file))
    mail = MailSender(db, config, email_cipher)
    account_mail = AccountMailService(db, config, hasher, sessions, cache, limiter, mail,
                                      email_cipher)
    erasure = ErasureService(config, db, cache, sessions, streams, stream_keys)
    accounts = AccountService(db, hasher, sessions, throttle, cache, images, stream_keys,
                              email_cipher, consents, account_mail, erasure,
                              avatar_hosts=config.avatar_hosts)
    counts = ViewerCounts(redis, config.node_id,
                          anonymous_per_network=config.viewers_anonymous_per_network,
                          min_dwell_seconds=config.viewer_min_dwell_seconds)
    viewers = ViewerHub(config, redis, counts, streams, sessions)
    streams.add_listener(viewers)
    events.subscribe(viewers)
    statistics = StatisticsService(config, db, redis, counts, cache, streams)
    publishing = PublishingService(db, cipher, cache, streams)
    media_nodes = MediaNodeRegistry(redis, config.media_node_heartbeat_ttl)
    exports = ExportService(config, db, email_cipher)
    cleanups.add("the export thread", lambda: exports.executor.shutdown(wait=False))
    retention = AddressRetention(db, config.ip_retention_days)
    push = PushSender(config, db)
    cleanups.add("the Web Push session", push.close)
    notifications = NotificationService(config, db, redis, sessions, email_cipher, mail, push)
    streams.add_listener(notifications)  # plans go-live announcements where they happen
    webhook_sender = WebhookSender(db, config, email_cipher, mail, notifications)
    webhooks = WebhookService(db, config, email_cipher, webhook_sender)
    streams.add_listener(WebhookEvents(webhooks))
    chat = ChatService(config, db, redis, events=webhooks)  # chat.message webhooks
    # The scheduled jobs, run in this order each round (`sf privacy purge` runs one round).
    jobs = JobRunner(redis, config.node_id, config.jobs_interval_seconds, [
        Job("erasure", erasure.purge_summary),
        Job("stale_exports", exports.fail_stale),
        Job("expired_exports", exports.delete_expired),
        Job("ip_retention", retention.erase_expired),
        Job("chat_retention", chat.purge_expired),
        Job("notification_retention", notifications.purge_expired),
        Job("webhook_deliveries_retention", webhooks.purge_old),
    ])
    node_ingest = None
    if ingest:
        node_ingest = IngestService(config, db, redis, streams, publishing, media_nodes,
                                    owner=ingest_owner)
        streams.add_listener(node_ingest)
        events.subscribe(node_ingest.remote)
    return Services(
        config=config, db=db, redis=redis, tokens=tokens, hasher=hasher, sessions=sessions,
        limiter=limiter, cipher=cipher, email_cipher=email_cipher, cache=cache, images=images, events=events,
        streams=streams, stream_keys=stream_keys,
        allowed_viewers=AllowedViewerService(db, cache, streams),
        categories=CategoryService(db, cache),
        chat_moderation=ChatModerationService(db, chat),
        publishing=publishing, accounts=accounts,
        consents=consents, mail=mail, account_mail=account_mail, erasure=erasure,
        statistics=statistics,
        stream_schema=StreamSchema(playback_secret=config.internal_secret,
                                   playback_ttl=config.playback_url_ttl),
        user_private=UserPrivateSchema(privacy_policy_version=consents.policy.version),
        tickets=TicketStore(redis), counts=counts, viewers=viewers, chat=chat,
        notifications=notifications,
        media_nodes=media_nodes, ingest=node_ingest, exports=exports, jobs=jobs,
        push=push, push_subscriptions=PushSubscriptions(config, db),
        follows=FollowService(db, cache, webhooks), webhooks=webhooks,
        webhook_sender=webhook_sender, cleanups=cleanups,
    )
