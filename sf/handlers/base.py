"""The API edge: one base handler that parses, authenticates, rate-limits, and writes errors.

Every API handler declares its auth mode (`auth = "required" | "optional" | "public"`, or a
dict per HTTP method); `sf.app.make_app` refuses to start if one forgets.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import time
import uuid
from asyncio import Future
from collections import OrderedDict
from typing import Any, ClassVar

import asyncpg
import redis.exceptions
import tornado.httputil
import tornado.web
import tornado.websocket
from marshmallow import Schema, ValidationError
from redis.asyncio import Redis

from sf.cache import Prefetched
from sf.config import Config
from sf.errors import (
    BadRequest,
    DomainError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from sf.observability import RATE_LIMITED
from sf.ratelimit import Gate, Limit, Verdict
from sf.schemas import flatten_messages
from sf.schemas.dump import encode_json
from sf.security import TokenClaims
from sf.services.container import Services
from sf.services.sessions import SessionStore

log = logging.getLogger("sf.api")

AUTH_MODES = ("required", "optional", "public")
# Route patterns shared by several resources.
USERNAME_ROUTE = r"(?P<username>[A-Za-z0-9_]{1,30})"
_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "bad_request", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
}
CSP_API = "default-src 'none'; frame-ancestors 'none'"
# Every response's headers, in Tornado's order (its own three first, with the Date between).
_STANDING_HEADERS = {"Server": f"TornadoServer/{tornado.version}",
                     "Content-Type": "text/html; charset=UTF-8"}
_API_HEADERS = {"API-Version": "1", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "Content-Security-Policy": CSP_API, "Cache-Control": "no-store"}
_DATE = [0, ""]  # the second and its HTTP date: formatted once a second, not per response


def _http_date() -> str:
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[:] = [now, tornado.httputil.format_timestamp(now)]
    return str(_DATE[1])


def _is_row_id(text: str) -> bool:
    """A decimal id in bigserial's range (1..2^63-1)."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= 2**63 - 1


class _Trust:
    """Memoized decisions about one configured tuple of trusted proxy networks (every request
    asks; hashing the tuple of networks for an lru_cache key costs more than the answer)."""

    __slots__ = ("networks", "peers", "forwarded")
    LIMIT = 4096  # memo entries each, forgotten all at once when full

    def __init__(self, networks: tuple[Any, ...]) -> None:
        self.networks = networks
        self.peers: dict[str, bool] = {}
        self.forwarded: dict[tuple[str, str], str] = {}

    def trusts(self, address: str) -> bool:
        known = self.peers.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in network for network in self.networks)
            if len(self.peers) >= self.LIMIT:
                self.peers.clear()
            self.peers[address] = known
        return known

    def forwarded_client(self, remote: str, forwarded: str) -> str:
        """The rightmost untrusted hop of X-Forwarded-For (from a trusted `remote`)."""
        key = (remote, forwarded)
        known = self.forwarded.get(key)
        if known is None:
            known = remote
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            for hop in reversed(hops):
                if not self.trusts(hop):
                    try:
                        known = str(ipaddress.ip_address(hop))
                    except ValueError:
                        pass
                    break
            else:
                known = hops[0] if hops else remote
            if len(self.forwarded) >= self.LIMIT:
                self.forwarded.clear()
            self.forwarded[key] = known
        return known


_TRUSTS: dict[int, _Trust] = {}


def _trust(networks: tuple[Any, ...]) -> _Trust:
    """The memo of a configured tuple, found by identity (it is held, so its id stays its)."""
    trust = _TRUSTS.get(id(networks))
    if trust is None or trust.networks is not networks:
        if len(_TRUSTS) >= 64:
            _TRUSTS.clear()
        trust = _TRUSTS[id(networks)] = _Trust(networks)
    return trust


def is_trusted(address: str, trusted: tuple[Any, ...]) -> bool:
    """Whether `address` is one of the configured proxies."""
    return _trust(trusted).trusts(address)


def client_ip(request: tornado.httputil.HTTPServerRequest, trusted: tuple[Any, ...]) -> str:
    """The client's address: X-Forwarded-For is read right to left, trusted proxies skipped."""
    remote = request.remote_ip or "0.0.0.0"
    trust = _trust(trusted)
    if not trust.trusts(remote):
        return remote
    return trust.forwarded_client(remote, request.headers.get("X-Forwarded-For", ""))


def bearer_claims(sessions: SessionStore, header: str, mode: str) -> TokenClaims | None:
    """The signature-checked claims of an `Authorization: Bearer` header under an auth mode.

    `required`: a token whose signature and expiry hold, or Unauthorized. `optional`: the same
    when a header is sent, None without one. `public`: never checked (a malformed header is
    still refused). Revocation is the caller's to check (`SessionStore.liveness_keys`), in the
    same round trip as the rate limit.
    """
    if not header:
        if mode == "required":
            raise Unauthorized("Authentication required")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Expected 'Authorization: Bearer <token>'")
    if mode == "public":
        return None
    return sessions.verify(token.strip())


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
        if not hasattr(self, "_client_ip"):
            self._client_ip = client_ip(self.request, self.config.trusted_proxies)
        return self._client_ip

    @property
    def is_https(self) -> bool:
        if self.request.protocol == "https":
            return True
        return self.from_trusted_proxy and self.request.headers.get("X-Forwarded-Proto") == "https"

    @property
    def from_trusted_proxy(self) -> bool:
        """The peer is a configured proxy (nginx), whose forwarding headers are believed."""
        return is_trusted(self.request.remote_ip or "", self.config.trusted_proxies)

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
            # Only the proxy in front (nginx sets $request_id) names a request; a client's own
            # X-Request-ID is never echoed or logged as ours.
            incoming = (self.request.headers.get("X-Request-ID", "")
                        if self.from_trusted_proxy else "")
            valid = (8 <= len(incoming) <= 64 and incoming.isascii()
                     and incoming.replace("-", "").isalnum())
            self.request_id = incoming if valid else uuid.uuid4().hex
        headers = self._headers
        headers.update(_STANDING_HEADERS)
        headers["Date"] = _http_date()
        headers["X-Request-ID"] = self.request_id
        headers.update(_API_HEADERS)
        if self.is_https:
            headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
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


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored or echoed (NUL, lone surrogate), or None.

    PostgreSQL text refuses NUL, and a lone surrogate (JSON "\\ud800") has no UTF-8 encoding:
    both would fail deep in the database driver or the JSON writer instead of as a 422.
    """
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def unstorable_input(data: Any) -> dict[str, list[str]]:
    """{field path: [message]} for every string (key or value) that `text_problem` refuses and
    every non-finite number, anywhere in a parsed body or query; walked without recursion."""
    problems: dict[str, list[str]] = {}
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        problem = None
        if isinstance(value, str):
            problem = text_problem(value)
        elif isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number"
        elif isinstance(value, dict):
            for key, item in value.items():
                key_text = str(key)
                if text_problem(key_text):
                    problems.setdefault(path or "_body", ["field names must be valid text"])
                    continue
                stack.append((item, f"{path}.{key_text}" if path else key_text))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{index}" if path else str(index))
                         for index, item in enumerate(value))
        if problem:
            problems.setdefault(path or "_body", [problem])
    return problems


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), whatever Python's json module accepts."""
    raise ValueError(f"{name} is not JSON")


class APIHandler(BaseHandler):
    """JSON API handler: CORS, body limits, Bearer auth and rate limits run in `prepare`."""

    max_body_setting: ClassVar[str] = "max_body_bytes"
    rate_bucket: ClassVar[str] = "api"

    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        """Limits beyond the per-IP/per-user one (login, register, key reset add theirs), for
        a request authenticated as `claims` (None: anonymous, or a token that failed)."""
        return []

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Path parameters, checked once for every route: no NUL or undecodable text, and an
        `*_id` is an int64 the database can hold (else the resource does not exist: 404)."""
        text = super().decode_argument(value, name)
        if name is not None and getattr(self, "path_kwargs", None) is None:  # path, not query
            if text_problem(text) or (name.endswith("_id") and not _is_row_id(text)):
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

    def _check_body_size(self) -> None:
        limit = getattr(self.config, self.max_body_setting)
        length = self.request.headers.get("Content-Length")
        size = len(self.request.body or b"")
        if length and length.isdigit():
            size = max(size, int(length))
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes")

    def _main_limit(self, claims: TokenClaims | None) -> Limit:
        """The per-user limit for a signed-in request, else the per-address one."""
        config = self.config
        if claims is not None:
            return Limit(self.rate_bucket, f"u{claims.user_id}", config.rate_limit_user,
                         config.rate_limit_window)
        return Limit(self.rate_bucket, f"ip{self.client_ip}", config.rate_limit_anonymous,
                     config.rate_limit_window)

    def _apply_verdict(self, verdict: Verdict) -> None:
        self.set_sticky_header("X-RateLimit-Limit", str(verdict.limit))
        self.set_sticky_header("X-RateLimit-Remaining", str(verdict.remaining))
        if not verdict.allowed:
            raise RateLimited(verdict.retry_after)

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

    def _prefetch(self, wanted: tuple[str | None, tuple[str, ...]], gate: Gate) -> None:
        if wanted[1]:
            self.prefetched = self.services.cache.prefetched(*wanted, gate.generation,
                                                             gate.entries)

    async def _rate_limit(self) -> None:
        """Count an anonymous request (or one whose authentication failed) by its address."""
        wanted = self._wanted_reads(None)
        gate = await self.services.limiter.hit(
            [self._main_limit(None), *self.extra_limits(None)], self.services.cache.reads(*wanted))
        self._apply_verdict(gate.verdict)
        self._prefetch(wanted, gate)

    async def _authenticate_and_limit(self) -> None:
        """Bearer auth and rate limits in one Redis round trip for a signed token: the
        session's liveness is checked and the request counted against its user, or, for a
        revoked token, against the address (so a stolen, revoked token cannot spend its
        user's budget). Any other failed authentication counts against the address too.
        The same round trip reads the cache entries the request answers from."""
        sessions = self.services.sessions
        try:
            claims = bearer_claims(sessions, self.request.headers.get("Authorization", ""),
                                   self.auth_mode())
        except Unauthorized:
            await self._rate_limit()
            raise
        if claims is None:
            await self._rate_limit()
            return
        wanted = self._wanted_reads(claims)
        gate = await self.services.limiter.hit_for_session(
            sessions.liveness_keys(claims), [self._main_limit(claims), *self.extra_limits(claims)],
            [self._main_limit(None), *self.extra_limits(None)], self.services.cache.reads(*wanted))
        self._apply_verdict(gate.verdict)
        if gate.alive is None:
            # Revocation cannot be checked: refuse rather than trust a possibly revoked token.
            raise Unavailable("Sign-in is temporarily unavailable, retry shortly")
        if not gate.alive:
            raise Unauthorized("Token revoked")
        self.claims = claims
        self._prefetch(wanted, gate)

    async def prepare(self) -> None:
        self._apply_cors()
        if self.request.method == "OPTIONS":
            return
        if self.request.method not in self.allowed_methods():
            # Before authentication: a method the resource lacks is a 405 (with Allow) for
            # everyone, not a 401 for those without a token.
            raise tornado.web.HTTPError(405)
        self._check_body_size()
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

    # --- input ---------------------------------------------------------------------------------

    def _load(self, schema: Schema, data: Any) -> dict[str, Any]:
        """`data` through `schema`; first, whatever no field may hold is refused (422)."""
        problems = unstorable_input(data)
        if problems:
            raise ValidationFailed("Invalid input", fields=problems)
        try:
            loaded: dict[str, Any] = schema.load(data)
            return loaded
        except ValidationError as exc:
            raise ValidationFailed("Invalid input", fields=flatten_messages(exc.messages)) from None

    def parse_json(self, schema: Schema) -> dict[str, Any]:
        """The body as JSON, validated by `schema`: 415, 400 or 422 when it is not right."""
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType("Expected Content-Type: application/json")
        try:
            data = json.loads(self.request.body or b"", parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("Request body is not valid JSON") from None
        except RecursionError:
            raise BadRequest("Request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValidationFailed("Invalid input", fields={"_body": ["expected a JSON object"]})
        return self._load(schema, data)

    def parse_query(self, schema: Schema) -> dict[str, Any]:
        """The query string, validated by `schema` (repeated parameters are an error).

        Loaded once per (schema, query string) and remembered: a few query strings make most
        list requests (a directory's pages; `cache_reads` and the handler both ask), and a
        marshmallow load was 4% of one. Refused queries are not remembered; they raise each
        time."""
        key = (schema, self.request.query)
        loaded = _QUERIES.get(key)
        if loaded is not None:
            _QUERIES.move_to_end(key)
            return dict(loaded)
        loaded = self._load_query(schema)
        if len(self.request.query) <= _QUERY_KEPT_LENGTH:
            _QUERIES[key] = loaded
            if len(_QUERIES) > _QUERIES_KEPT:
                _QUERIES.popitem(last=False)
        return dict(loaded)

    def _load_query(self, schema: Schema) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, values in self.request.query_arguments.items():
            if len(values) > 1:
                raise ValidationFailed("Invalid input", fields={name: ["given more than once"]})
            data[name] = values[0].decode("utf-8", "replace")
        return self._load(schema, data)


# Parsed query strings by (schema instance, query string): schemas are module-level instances.
_QUERIES: OrderedDict[tuple[Schema, str], dict[str, Any]] = OrderedDict()
_QUERIES_KEPT = 4096
# Only short ones: a request is parsed before its rate limit is counted, and thousands of
# long valid queries held ~33 MB a process (outside attack F7). Pages' queries are short.
_QUERY_KEPT_LENGTH = 256


class NotFoundHandler(APIHandler):
    """Every unknown route: 404 in the API error shape."""

    auth = "public"

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404, reason="No such route")

