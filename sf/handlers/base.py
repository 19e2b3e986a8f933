"""The API edge: one base handler that parses, authenticates, rate-limits, and writes errors.

Every API handler declares its auth mode (`auth = "required" | "optional" | "public"`, or a
dict per HTTP method); `sf.app.make_app` refuses to start if one forgets. The handlers here
compose what their neighbours hold: which forwarding headers to believe (`proxy_trust`), the
standing response headers (`headers`), auth + rate limits + cache read-ahead (`request_gate`)
and the checks every input passes (`inputs`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from asyncio import Future
from typing import Any, ClassVar

import asyncpg
import redis.exceptions
import tornado.httputil
import tornado.web
import tornado.websocket
from marshmallow import Schema
from redis.asyncio import Redis

from sf.cache import Prefetched
from sf.config import Config
from sf.errors import DomainError, NotFound, RateLimited, Unauthorized, Unavailable
from sf.handlers import inputs, proxy_trust
from sf.handlers.headers import set_standing_headers
from sf.handlers.request_gate import admit
from sf.observability import RATE_LIMITED
from sf.ratelimit import Limit, signed_in_address_limit
from sf.schemas.dump import encode_json
from sf.security import TokenClaims
from sf.services.container import Services

log = logging.getLogger("sf.api")

AUTH_MODES = ("required", "optional", "public")
# Route patterns shared by several resources.
USERNAME_ROUTE = r"(?P<username>[A-Za-z0-9_]{1,30})"
_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "bad_request", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
}


class BaseHandler(tornado.web.RequestHandler):
    """Typed access to the node's services plus the shared response policy."""

    auth: ClassVar[str | dict[str, str] | None] = None

    @property
    def services(self) -> Services:
        services: Services = self.settings["services"]
        return services

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def db(self) -> asyncpg.Pool:
        return self.services.db

    @property
    def redis(self) -> Redis:
        return self.services.redis

    def initialize(self) -> None:
        self.claims: TokenClaims | None = None
        self.prefetched: Prefetched | None = None
        self.started = time.perf_counter()
        # Plain HTTP requests count as in progress until `finish` (a WebSocket is not a request
        # to wait for: the node closes those with 1001 when it stops).
        self._in_drain = not isinstance(self, tornado.websocket.WebSocketHandler)
        if self._in_drain:
            self.services.drain.started()

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        drain = self.services.drain
        if drain.draining and not self._headers_written:
            self.set_header("Connection", "close")  # shutting down: the proxy goes elsewhere
        try:
            return super().finish(chunk)
        finally:
            if self._in_drain:
                self._in_drain = False
                drain.ended()

    @property
    def client_ip(self) -> str:
        """The client's address, as far as the configured proxies vouch for it."""
        if not hasattr(self, "_client_ip"):
            self._client_ip = proxy_trust.client_ip(self.request, self.config.trusted_proxies)
        return self._client_ip

    @property
    def is_https(self) -> bool:
        return proxy_trust.is_https(self.request, self.config.trusted_proxies)

    def set_sticky_header(self, name: str, value: str) -> None:
        """A header that survives `clear()`, which Tornado runs before writing an error."""
        if not hasattr(self, "_sticky_headers"):
            self._sticky_headers: dict[str, str] = {}
        self._sticky_headers[name] = value
        self.set_header(name, value)

    def clear(self) -> None:
        """Tornado's `clear`, with every standing header set in one go (`set_default_headers`)
        rather than one validated `set_header` each: they are constants or checked here."""
        self._headers = tornado.httputil.HTTPHeaders()
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        if not getattr(self, "request_id", ""):
            self.request_id = proxy_trust.request_id_for(self.request,
                                                         self.config.trusted_proxies)
        set_standing_headers(self._headers, self.request_id, self.is_https)
        for name, value in getattr(self, "_sticky_headers", {}).items():
            self.set_header(name, value)

    def auth_mode(self) -> str:
        mode = self.auth
        if isinstance(mode, dict):
            mode = mode.get(self.request.method or "", "required")
        return mode or "required"

    def write_json(self, payload: Any, status: int = 200) -> None:
        """An answer: a JSON-able value, or JSON bytes a service already encoded (cached)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(payload if isinstance(payload, bytes) else encode_json(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body: dict[str, Any]
        if isinstance(exc, DomainError):
            body = {"code": exc.code, "message": exc.message}
            if exc.fields:
                body["fields"] = exc.fields
            if isinstance(exc, RateLimited | Unavailable):
                self.set_header("Retry-After", str(exc.retry_after))
            if isinstance(exc, RateLimited):
                RATE_LIMITED.labels(getattr(self, "rate_bucket", "api")).inc()
            if isinstance(exc, Unauthorized):
                self.set_header("WWW-Authenticate", 'Bearer realm="sf"')
        elif status_code >= 500:
            body = {"code": "internal_error", "message": "Internal server error"}
        else:
            reason = self._reason if isinstance(exc, tornado.web.HTTPError) else "Error"
            body = {"code": _STATUS_CODES.get(status_code, "bad_request"), "message": reason}
            if status_code == 401:
                self.set_header("WWW-Authenticate", 'Bearer realm="sf"')
        if status_code == 405:  # RFC 9110 §15.5.6: say which methods the resource has
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"error": body}))

    @classmethod
    @functools.cache
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (OPTIONS and HEAD as Tornado answers
        them: OPTIONS for CORS preflight on API handlers, HEAD where GET is)."""
        methods = [method for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
                   if getattr(cls, method.lower()) is not getattr(tornado.web.RequestHandler,
                                                                  method.lower())]
        if "GET" in methods and cls.head is not tornado.web.RequestHandler.head:
            methods.append("HEAD")
        if cls.options is not tornado.web.RequestHandler.options:
            methods.append("OPTIONS")
        return methods

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if is_outage(exc):  # PostgreSQL or Redis unreachable: "retry shortly", not a bug
            kwargs["exc_info"] = (Unavailable, Unavailable("A service is temporarily "
                                                           "unavailable, retry shortly"), None)
            exc = kwargs["exc_info"][1]
        if isinstance(exc, DomainError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, DomainError | tornado.web.HTTPError):
            return
        if is_outage(value):
            log.warning("dependency unreachable in %s %s: %s", self.request.method,
                        self.request.path, type(value).__name__,
                        extra={"request_id": self.request_id})
            return
        log.error("unhandled error in %s %s", self.request.method, self.request.path,
                  exc_info=(typ, value, tb), extra={"request_id": self.request_id})

    @property
    def user_id(self) -> int:
        """The authenticated user's id (only on handlers whose auth is `required`)."""
        if self.claims is None:
            raise Unauthorized("Authentication required")
        return self.claims.user_id


# What a request meets when PostgreSQL or Redis is down or restarting (the pool reconnects by
# itself once it is back): the answer is 503 with Retry-After, not a 500.
OUTAGE_ERRORS = (
    ConnectionError,  # refused / reset while connecting or talking
    TimeoutError,  # pool acquire or socket timeouts
    asyncpg.PostgresConnectionError,  # includes a connection closed under the query
    asyncpg.exceptions.AdminShutdownError,  # the server is stopping or restarting
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up
    asyncpg.exceptions.InternalClientError,  # a pooled connection caught mid-restart
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_outage(exc: BaseException | None) -> bool:
    return isinstance(exc, OUTAGE_ERRORS)


class APIHandler(BaseHandler):
    """JSON API handler: CORS, body limits, Bearer auth and rate limits run in `prepare`."""

    max_body_setting: ClassVar[str] = "max_body_bytes"
    rate_bucket: ClassVar[str] = "api"
    # True: refused (503) when Redis is unreachable, before the handler runs: what it does
    # is unsafe without its limits (sign-up, reset mails) or would be half done (an account
    # created or a password changed, then no session made or revoked).
    # operations.md#without-redis-degraded-modes
    needs_redis: ClassVar[bool] = False

    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        """Limits beyond the per-IP/per-user one (login, register, key reset add theirs), for
        a request authenticated as `claims` (None: anonymous, or a token that failed)."""
        return []

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Path parameters, checked once for every route: no NUL or undecodable text, and an
        `*_id` is an int64 the database can hold (else the resource does not exist: 404)."""
        text = super().decode_argument(value, name)
        if name is not None and getattr(self, "path_kwargs", None) is None:  # path, not query
            if inputs.text_problem(text) or (name.endswith("_id") and not inputs.is_row_id(text)):
                raise NotFound("Not found")
        return text

    def _apply_cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin.rstrip("/") in self.config.cors_origins:
            self.set_sticky_header("Access-Control-Allow-Origin", origin)
            self.set_sticky_header("Access-Control-Allow-Credentials", "true")
            self.set_sticky_header("Access-Control-Expose-Headers",
                            "API-Version, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After, "
                            "X-Request-ID")
        self.set_sticky_header("Vary", "Origin")

    def _main_limit(self, claims: TokenClaims | None) -> Limit:
        """The per-user limit for a signed-in request, else the per-address one."""
        config = self.config
        if claims is not None:
            return Limit(self.rate_bucket, f"u{claims.user_id}", config.rate_limit_user,
                         config.rate_limit_window)
        return Limit(self.rate_bucket, f"ip{self.client_ip}", config.rate_limit_anonymous,
                     config.rate_limit_window)

    def _limits(self, claims: TokenClaims | None) -> list[Limit]:
        limits = [self._main_limit(claims), *self.extra_limits(claims)]
        if claims is not None:  # the address's own budget too, in the same round trip
            limits.append(signed_in_address_limit(self.config, self.client_ip))
        return limits

    def cache_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        """The cache entries this request answers from, as (namespace or None, keys), read
        in the same Redis round trip as its rate limit (`self.prefetched`); () when none.
        Called before the handler runs, for GET: input it cannot parse means no read-ahead
        (the handler refuses it after the request was counted)."""
        return None, ()

    def _wanted_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        if self.request.method != "GET":
            return None, ()
        try:
            return self.cache_reads(claims)
        except DomainError:
            return None, ()

    async def _authenticate_and_limit(self) -> None:
        """The request gate (`sf.handlers.request_gate.admit`): its rate-limit headers on the
        answer, then 429, 401 or 503, or the request's claims and cache entries read ahead."""
        admission = await admit(self.services, self.request.headers.get("Authorization", ""),
                                self.auth_mode(), self._limits, self._wanted_reads)
        verdict = admission.verdict
        self.set_sticky_header("X-RateLimit-Limit", str(verdict.limit))
        self.set_sticky_header("X-RateLimit-Remaining", str(verdict.remaining))
        if not verdict.allowed:
            raise RateLimited(verdict.retry_after)
        if admission.refusal is not None:
            raise admission.refusal
        if self.needs_redis and not verdict.counted:
            raise Unavailable("Sign-in and sign-up are temporarily unavailable, retry shortly")
        self.claims = admission.claims
        self.prefetched = admission.prefetched

    async def prepare(self) -> None:
        self._apply_cors()
        if self.request.method == "OPTIONS":
            return
        if self.request.method not in self.allowed_methods():
            # Before authentication: a method the resource lacks is a 405 (with Allow) for
            # everyone, not a 401 for those without a token.
            raise tornado.web.HTTPError(405)
        inputs.check_body_size(self.request, getattr(self.config, self.max_body_setting))
        await self._authenticate_and_limit()

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight."""
        if "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
            self.set_header("Access-Control-Allow-Headers",
                            "Authorization, Content-Type, X-CSRF-Token, X-Refresh-Token, X-Request-ID")
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def finish_accepted(self) -> None:
        """202 with no body: no Content-Type either (Tornado would default to text/html)."""
        self.set_status(202)
        self.clear_header("Content-Type")
        self.finish()

    # --- input (sf/handlers/inputs.py) ----------------------------------------------------------

    def parse_json(self, schema: Schema) -> dict[str, Any]:
        """The body as JSON, validated by `schema`: 415, 400 or 422 when it is not right."""
        return inputs.parse_json(self.request, schema)

    def parse_query(self, schema: Schema) -> dict[str, Any]:
        """The query string, validated by `schema` (repeated parameters are an error)."""
        return inputs.parse_query(self.request, schema)


class NotFoundHandler(APIHandler):
    """Every unknown route: 404 in the API error shape."""

    auth = "public"

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="No such route")

