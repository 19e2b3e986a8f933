"""Configuration: defaults from conf/sf.toml, overridden by SF_* environment variables.

Every setting is typed and validated once at start-up, so a bad value stops the process with a
message that names the variable instead of failing later in some request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric import ec

from sf.redis_client import SENTINEL_SCHEMES
from sf.redis_client import url_problem as redis_url_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "conf" / "sf.toml"
ENV_PREFIX = "SF_"

SECRET_NAMES = (
    "jwt_secret", "stream_key_encryption_keys", "stream_key_lookup_secret", "internal_secret",
    "vapid_private_key",
)
# What the public edge alone (`sf edge`) needs: it checks playback signatures, nothing else.
EDGE_SECRET_NAMES = ("internal_secret",)
# What `sf backup` and `sf restore` need besides: the key of the backup archives (no API node
# holds it). Every secret that is given (setting or file) is read and checked.
BACKUP_SECRET_NAMES = (*SECRET_NAMES, "backup_encryption_key")
ALL_SECRET_NAMES = BACKUP_SECRET_NAMES


class ConfigError(ValueError):
    """A setting has a value the platform cannot run with."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- value types: each setting names the type that parses and checks it ---------------------

class Value:
    """How one setting's raw text (from conf/sf.toml or SF_*) becomes a checked value."""

    def parse(self, name: str, raw: object) -> object:
        return str(raw)

    def describe(self) -> str:
        """The values accepted, in words (docs/configuration.md)."""
        return "text"

    @staticmethod
    def fail(name: str, message: str) -> ConfigError:
        return ConfigError(f"{_env_name(name)}: {message}")


class Text(Value):
    """Any string (secrets, hosts, file names)."""


class Number(Value):
    """A number within bounds (`Integer` for whole ones)."""

    convert: Callable[[str], Any] = float
    kind = "a number"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def parse(self, name: str, raw: object) -> Any:
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = self.convert(str(raw).strip())
        except ValueError:
            raise self.fail(name, f"expected {self.kind}, got {raw!r}") from None
        if not self.low <= value <= self.high:
            raise self.fail(name, f"{value} is outside {self.low}..{self.high}")
        return value

    def describe(self) -> str:
        return f"number, {self.low:,g} to {self.high:,g}"


class Integer(Number):
    convert = int
    kind = "an integer"

    def describe(self) -> str:
        return f"integer, {self.low:,} to {self.high:,}"


class Boolean(Value):
    def describe(self) -> str:
        return "true or false"

    def parse(self, name: str, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise self.fail(name, f"expected true/false, got {raw!r}")


class Choice(Value):
    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def describe(self) -> str:
        return " \\| ".join(self.choices)

    def parse(self, name: str, raw: object) -> str:
        text = str(raw).strip()
        if text not in self.choices:
            raise self.fail(name, f"{text!r} is not one of {', '.join(self.choices)}")
        return text


class ProjectPath(Value):
    """A path; a relative one is relative to the project root."""

    def describe(self) -> str:
        return "path (relative: to the project root)"

    def parse(self, name: str, raw: object) -> Path:
        path = Path(str(raw)) if str(raw) else Path()
        return path if path.is_absolute() else PROJECT_ROOT / path


class Url(Value):
    def __init__(self, *schemes: str) -> None:
        self.schemes = schemes

    def describe(self) -> str:
        return " or ".join(f"{scheme}://" for scheme in self.schemes) + " URL"

    def parse(self, name: str, raw: object) -> str:
        text = str(raw).strip()
        try:
            parsed = urlsplit(text)
            located = parsed.path if parsed.scheme == "unix" else parsed.hostname
            if parsed.scheme not in SENTINEL_SCHEMES:
                parsed.port  # noqa: B018 (raises ValueError for a port that is no number)
        except ValueError:  # e.g. an unclosed [IPv6 address
            parsed, located = None, None
        if parsed is None or parsed.scheme not in self.schemes or not located:
            # Not the URL itself: its user information and query may hold passwords.
            raise self.fail(name, f"expected a {'/'.join(self.schemes)} URL, got "
                                  f"{redact_url(text)!r}")
        return text


class RedisUrl(Url):
    """One Redis server's URL, or a Sentinel group's (`sf.redis_client`)."""

    def __init__(self) -> None:
        super().__init__("redis", "rediss", "unix", *SENTINEL_SCHEMES)

    def parse(self, name: str, raw: object) -> str:
        text = super().parse(name, raw)
        problem = redis_url_problem(text)
        if problem:
            raise self.fail(name, problem)  # (not the URL: it may hold passwords)
        return text


def redact_url(text: str) -> str:
    """A URL as it may be shown: without user information (passwords) or query."""
    text = re.sub(r"^([^:/?#]*:?//)[^/?#]*@", r"\1***@", text)
    return text.split("?", 1)[0] + ("?***" if "?" in text else "")


class OptionalUrl(Url):
    """A URL, or empty for "none"."""

    def describe(self) -> str:
        return super().describe() + ", or empty"

    def parse(self, name: str, raw: object) -> str:
        return super().parse(name, raw) if str(raw).strip() else ""


class ListOf(Value):
    """A comma-separated list; `item` parses one element."""

    def parse(self, name: str, raw: object) -> tuple[object, ...]:
        return tuple(self.item(name, part.strip()) for part in str(raw).split(",") if part.strip())

    def item(self, name: str, part: str) -> object:
        return part


class Networks(ListOf):
    """IP networks such as 127.0.0.1/32,10.0.0.0/8."""

    def describe(self) -> str:
        return "IP networks, comma separated"

    def item(self, name: str, part: str) -> IPNetwork:
        try:
            return ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise self.fail(name, f"{part!r} is not an IP network") from None


class Origins(ListOf):
    """Browser origins such as https://example.com."""

    def describe(self) -> str:
        return "origins (https://host), comma separated"

    def item(self, name: str, part: str) -> str:
        part = part.rstrip("/")
        parsed = urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
            raise self.fail(name, f"{part!r} is not an origin like https://host")
        return part


class Hosts(ListOf):
    """DNS host names (no scheme, port, path or IP address), lower-cased, without repeats."""

    def describe(self) -> str:
        return "host names, comma separated"

    def parse(self, name: str, raw: object) -> tuple[object, ...]:
        return tuple(dict.fromkeys(super().parse(name, raw)))

    def item(self, name: str, part: str) -> str:
        host = part.lower().rstrip(".")
        labels = host.split(".")
        try:
            ipaddress.ip_address(host)
            is_ip = True
        except ValueError:
            is_ip = False
        if is_ip or len(host) > 253 or len(labels) < 2 or not labels[-1][:1].isalpha() \
                or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise self.fail(name, f"{part!r} is not a host name like cdn.example.com")
        return host


class Ladder(ListOf):
    """Rendition heights, highest first."""

    def describe(self) -> str:
        return "heights among 1080, 720, 480, 360, 240, comma separated"

    RUNGS = (1080, 720, 480, 360, 240)

    def parse(self, name: str, raw: object) -> tuple[int, ...]:
        rungs = {int(str(height)) for height in super().parse(name, raw)}
        if not rungs:
            raise self.fail(name, "at least one rung is needed")
        return tuple(sorted(rungs, reverse=True))

    def item(self, name: str, part: str) -> int:
        height = Integer(1, 10000).parse(name, part)
        if height not in self.RUNGS:
            raise self.fail(name, f"rung {height} is not one of 1080,720,480,360,240")
        return height


class Endpoints(ListOf):
    """host:port pairs such as 127.0.0.1:8081,media-0.media:8083 (nginx upstream servers)."""

    def describe(self) -> str:
        return "host:port pairs, comma separated"

    def item(self, name: str, part: str) -> str:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
                or not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
            raise self.fail(name, f"{part!r} is not host:port")
        return part


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def setting(value: Value, help: str, unit: str = "") -> Any:
    """A Config field parsed and checked by `value`, with the help text and unit that
    docs/configuration.md is generated from (`python -m sf.ops.config_docs`)."""
    return field(metadata={"value": value, "help": help, "unit": unit})


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True)
class Config:
    """All settings of one SF node; build it with `load_config()`."""

    env: str = setting(
        Choice("development", "production", "test"),
        "What the node runs as: `development` (`make run`), `production` or `test`.")
    log_level: str = setting(
        Choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "Least severe log level written (one JSON object a line on stderr).")
    var_dir: Path = setting(
        ProjectPath(),
        "Runtime state: local databases, secrets, media, logs (relative to the project root).")
    public_host: str = setting(
        Text(),
        "Host name clients use: in the RTMP URL shown to streamers and the TLS certificate.")
    http_host: str = setting(
        Text(), "Where the public nginx listens for HTTP and RTMP (0.0.0.0 to serve the network).")
    http_port: int = setting(
        Integer(1, 65535),
        "Public HTTP port of the edge nginx (`/api`, `/ws`, `/hls`, `/media`, the web front).")
    api_host: str = setting(Text(), "Where the Tornado API processes listen (behind nginx).")
    api_port: int = setting(Integer(1, 65535), "Port the API processes share (behind nginx).")
    api_processes: int = setting(
        Integer(0, 64),
        "API processes per node (`sf serve`, `sf node`, `make run`); 0 = one per core. A "
        "supervisor restarts a process that dies; process 0 holds the node's stream actors and "
        "takes nginx-rtmp's callbacks (the others forward any that reach them).")
    api_internal_port: int = setting(
        Integer(1, 65535),
        "Process *i* of a node also listens on this port + *i* (on `SF_API_HOST`): `/metrics`, "
        "`/healthz`, `/readyz` of that process, and nginx-rtmp's callbacks on process 0. Never "
        "expose it publicly.")
    shutdown_grace_seconds: float = setting(
        Number(0, 600),
        "On SIGTERM a process stops accepting, keeps answering the requests on connections it "
        "has (`Connection: close`, `/readyz` 503) until none has started for 1 s, for at most "
        "this long; then closes WebSockets with 1001, stops actors and FFmpeg, and exits.",
        unit="seconds")
    rtmp_port: int = setting(Integer(1, 65535), "RTMP ingest port (nginx-rtmp).")
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        Networks(), "Networks whose `X-Forwarded-For` the API believes (the node's own nginx).")
    cors_origins: tuple[str, ...] = setting(
        Origins(),
        "Other browser origins allowed to call the API with credentials, comma separated (the "
        "web front is same-origin and needs none). List only origins you control: cookies are "
        "not separated by port, so an allowed origin on the same host can refresh a user's "
        "tokens.")
    tls_cert: str = setting(
        Text(),
        "PEM certificate file; with `SF_TLS_KEY` nginx serves HTTPS (`sf tls-cert` makes a "
        "self-signed pair). Empty: plain HTTP.")
    tls_key: str = setting(Text(), "PEM private key file of `SF_TLS_CERT`; set both or neither.")
    node_id: str = setting(Text(), "This node's name in Redis; empty: `<hostname>-<SF_API_PORT>`.")
    database_url: str = setting(
        Url("postgresql", "postgres"),
        "PostgreSQL; a local URL without a password gets `var/secrets/postgres_password`.")
    database_pool_min: int = setting(
        Integer(1, 100), "Connections the asyncpg pool of each API process keeps open.",
        unit="connections")
    database_pool_max: int = setting(
        Integer(1, 500), "Most connections the asyncpg pool of each API process opens.",
        unit="connections")
    redis_url: str = setting(
        RedisUrl(),
        "Redis: one server, or the primary of a Sentinel group "
        "(`redis+sentinel://[user:password@]host1:26379,host2:26379/<service>/<db>`, "
        "`?sentinel_password=` for the sentinels; `rediss+sentinel://` for TLS). A local "
        "redis:// URL without a password gets `var/secrets/redis_password`.")
    jwt_secret: str = setting(
        Text(),
        "HS256 signing key of access tokens (at least 32 characters); empty: "
        "`var/secrets/jwt_secret` (`sf secrets init` makes it).")
    stream_key_encryption_keys: str = setting(
        Text(),
        "`id:base64(32 bytes),…`: AES-GCM keys of stored stream keys; the first encrypts, all "
        "decrypt (`sf keys rotate` re-encrypts with the first). Empty: "
        "`var/secrets/stream_key_encryption_keys`.")
    stream_key_lookup_secret: str = setting(
        Text(),
        "HMAC key of the stream-key lookup digest (at least 16 characters; never rotated with "
        "the encryption keys). Empty: `var/secrets/stream_key_lookup_secret`.")
    internal_secret: str = setting(
        Text(),
        "Shared secret of nginx-rtmp's callbacks and control endpoint; signs private playback "
        "URLs and `sf_vid` cookies (at least 16 characters). Empty: "
        "`var/secrets/internal_secret`.")
    access_token_ttl: int = setting(Integer(30, 86400), "Lifetime of an access token.", unit="seconds")
    refresh_token_ttl: int = setting(
        Integer(300, 31536000), "Lifetime of a refresh session (30 days by default).", unit="seconds")
    bcrypt_rounds: int = setting(
        Integer(4, 16),
        "bcrypt cost of password hashes (log2 of the rounds). 10 is OWASP's floor and costs 59 ms "
        "of CPU a check on the reference machine (11: 117 ms, 12: 234 ms; docs/benchmarks.md), "
        "which keeps sign-in under its p95 of 200 ms. A stored hash of another cost is redone "
        "at this one on the user's next successful login.")
    password_checks_max_pending: int = setting(
        Integer(1, 100000),
        "Password checks and hashes (sign-in, sign-up, password and e-mail changes, account "
        "erasure) waiting or running at once per API process; one more is answered 503 with "
        "`Retry-After: 1` at once. A node holds `SF_API_PROCESSES` times this.", unit="checks")
    max_body_bytes: int = setting(
        Integer(1024, 10485760), "Largest JSON body (413 above).", unit="bytes")
    max_avatar_bytes: int = setting(
        Integer(1024, 52428800), "Largest avatar upload (413 above).", unit="bytes")
    avatar_size: int = setting(
        Integer(16, 2048), "Avatars are resized to fit a square of this side.", unit="pixels")
    avatar_max_pixels: int = setting(
        Integer(1024, 200000000),
        "Larger images are refused before decoding (decompression bombs; a 12 MP RGBA decode is "
        "about 48 MB).", unit="pixels")
    avatar_hosts: tuple[str, ...] = setting(
        Hosts(),
        "Host names whose `https://` URLs a profile may use as avatar, comma separated; empty: "
        "uploaded avatars only.")
    redis_outage_wait_seconds: float = setting(
        Number(0, 60),
        "A signed-in request that finds Redis unreachable waits for it this long from the "
        "outage's start (asking again ten times a second) before answering 503: a Sentinel "
        "failover (`down-after-milliseconds` plus about 2 s) or a quick restart costs latency, "
        "not errors. 0: 503 at once.", unit="seconds")
    rate_limit_window: int = setting(
        Integer(1, 86400), "Window of the request rate limits below.", unit="seconds")
    rate_limit_anonymous: int = setting(
        Integer(1, 10**9), "Requests per window per client address without a token.",
        unit="requests")
    rate_limit_user: int = setting(
        Integer(1, 10**9), "Requests per window per signed-in user.", unit="requests")
    rate_limit_auth_ip: int = setting(
        Integer(1, 10**9), "Logins and registrations per window per client address.",
        unit="requests")
    rate_limit_auth_network: int = setting(
        Integer(1, 10**9),
        "Logins, registrations and password resets per window from one /24 (IPv4) or /64 (IPv6) "
        "network, all its addresses together.", unit="requests")
    rate_limit_auth_node: int = setting(
        Integer(1, 10**9),
        "Logins per window on one node (`SF_NODE_ID`) from all addresses together; the same "
        "again for registrations and for password resets.", unit="requests")
    rate_limit_authenticated_ip: int = setting(
        Integer(1, 10**9),
        "Signed-in requests per window per client address, all its accounts together (each "
        "account also has `SF_RATE_LIMIT_USER`).", unit="requests")
    accounts_per_range_per_day: int = setting(
        Integer(1, 10**9),
        "Registration attempts per day (a fixed UTC day window) from one /24 (IPv4) or /64 "
        "(IPv6) network.", unit="accounts")
    rate_limit_auth_account: int = setting(
        Integer(1, 10**9),
        "Failed logins per window per account and client address; then 429 for that pair only "
        "(a success clears it).", unit="failures")
    rate_limit_auth_account_ceiling: int = setting(
        Integer(1, 10**9),
        "Failed logins per window per account from all addresses; past it a login to the account "
        "from a /24 (IPv4) or /64 (IPv6) network that failed against it this window first waits "
        "0.5 s, doubling every 10 further failures up to 8 s (other networks, the owner's, do "
        "not wait).",
        unit="failures")
    rate_limit_key_reset: int = setting(
        Integer(1, 10**9), "Stream-key resets per window per user.", unit="requests")
    cache_ttl: int = setting(
        Integer(0, 3600), "How long hot public reads are cached in Redis (0 = off).",
        unit="seconds")
    media_dir: Path = setting(
        ProjectPath(), "HLS output, thumbnails and avatars; empty: `<SF_VAR_DIR>/media`.")
    ffmpeg: str = setting(Text(), "The FFmpeg binary.")
    ffprobe: str = setting(Text(), "The ffprobe binary.")
    nginx: str = setting(Text(), "The nginx binary (with the RTMP module on media nodes).")
    hls_segment_seconds: int = setting(Integer(1, 10), "Length of an HLS segment.", unit="seconds")
    hls_playlist_size: int = setting(Integer(2, 60), "Segments in a live playlist.", unit="segments")
    thumbnail_interval: int = setting(
        Integer(1, 3600), "Time between a live stream's thumbnails.", unit="seconds")
    transcode_preset: str = setting(
        Choice("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
        "x264 preset of the transcoded ladder.")
    ladder: tuple[int, ...] = setting(
        Ladder(), "Rendition heights of the ladder, comma separated; never above the source.")
    source_passthrough: bool = setting(
        Boolean(), "Add a \"source\" rendition copied without transcoding to every stream.")
    publish_grace_seconds: int = setting(
        Integer(0, 3600),
        "An encoder reconnecting with the same key within this continues the same stream id.",
        unit="seconds")
    stream_liveness_timeout: int = setting(
        Integer(5, 3600), "A live stream with no `on_update` for this long is ended by the sweeper.",
        unit="seconds")
    segment_retention_seconds: int = setting(
        Integer(0, 86400), "HLS files of ended streams are removed after this.", unit="seconds")
    media_nodes: tuple[IPNetwork, ...] = setting(
        Networks(), "Networks that may call `/internal/rtmp/*` (nginx-rtmp's callbacks).")
    real_ip_from: tuple[IPNetwork, ...] = setting(
        Networks(),
        "Proxies in front of this node's nginx whose `X-Forwarded-For` it believes (compose: "
        "the gateway's network); empty: nginx is the edge.")
    media_control_host: str = setting(
        Text(), "Where the nginx-rtmp control endpoint listens (never public).")
    media_control_port: int = setting(
        Integer(1, 65535), "Port of this node's nginx-rtmp control endpoint (`drop`, `/stat`).")
    media_node_url: str = setting(
        Text(),
        "How API nodes reach this node's control endpoint; empty: "
        "`http://127.0.0.1:<SF_MEDIA_CONTROL_PORT>`.")
    media_http_port: int = setting(
        Integer(1, 65535),
        "This media node's own nginx HTTP listener (HLS origin, avatars, thumbnails) behind the "
        "edge; never public.")
    media_origin: str = setting(
        Text(),
        "host:port where the edge reaches that listener; empty: "
        "`127.0.0.1:<SF_MEDIA_HTTP_PORT>`.")
    edge_workers: int = setting(
        Integer(0, 64), "Worker processes of the public edge nginx (0 = one per core).")
    edge_api_servers: tuple[str, ...] = setting(
        Endpoints(),
        "host:port of every API process group the edge balances over, comma separated "
        "(`sf edge` looks names up every 5 s); empty: `<SF_API_HOST>:<SF_API_PORT>`.")
    edge_media_origins: tuple[str, ...] = setting(
        Endpoints(),
        "host:port of every media node's origin (its `SF_MEDIA_ORIGIN`), comma separated, asked "
        "in turn; empty: this node's `SF_MEDIA_ORIGIN`.")
    playback_url_ttl: int = setting(
        Integer(30, 86400),
        "Lifetime of a private stream's signed playback URL; renewed by reading the stream.",
        unit="seconds")
    ws_connections_per_address: int = setting(
        Integer(1, 100000),
        "Open viewer WebSockets per client address on one node (429 beyond; households and "
        "campuses share NAT).", unit="connections")
    sweep_interval: float = setting(
        Number(0.05, 3600), "Time between liveness and retention sweeps.", unit="seconds")
    viewers_sync_seconds: float = setting(
        Number(0.05, 60),
        "Time between copies of the live viewer totals (Redis) onto streams and categories "
        "(one node at a time, under a Redis leader lock).", unit="seconds")
    stats_sample_seconds: float = setting(
        Number(0.1, 3600),
        "Time between viewer samples of live streams for their statistics.", unit="seconds")
    gc_full_seconds: float = setting(
        Number(0, 7 * 86400),
        "Time between full garbage collections of an API process (0 = never); in between, "
        "survivors are frozen every 10 s so collections never walk the long-lived viewer "
        "connections (`sf/node/gcpolicy.py`).", unit="seconds")
    alert_webhook_url: str = setting(
        OptionalUrl("http", "https"),
        "ERROR log events also go here as Alertmanager-compatible JSON (e.g. Alertmanager's "
        "`/api/v2/alerts`); empty: off.")
    alert_webhook_dedup_seconds: float = setting(
        Number(0, 86400), "The same event (logger + message) is posted once per this.",
        unit="seconds")
    alert_webhook_max_per_minute: int = setting(
        Integer(1, 10000), "Most alerts posted a minute by one process.", unit="alerts")
    smtp_url: str = setting(
        Url("smtp", "smtps"),
        "The SMTP server mails go through: `smtp://` (STARTTLS when the server offers it) or "
        "`smtps://` (TLS from the start), with `user:password@` when it needs a login. `make "
        "run` starts a local sink on the default (mails kept under `var/mail/`).")
    smtp_timeout: float = setting(
        Number(1, 300), "Longest wait for the SMTP server in one step (connect, a command).",
        unit="seconds")
    mail_from: str = setting(Text(), "The From of every mail (an address, optionally with a name).")
    public_url: str = setting(
        OptionalUrl("http", "https"),
        "Base URL of the web front as users reach it, for links in mails (e.g. "
        "`https://sf.example.com`); empty: `http(s)://SF_PUBLIC_HOST:SF_HTTP_PORT`.")
    mail_poll_seconds: float = setting(
        Number(0.05, 300),
        "Each API process's mail sender looks for due mails this often (and at once after its "
        "own requests queue one).", unit="seconds")
    mail_retry_seconds: float = setting(
        Number(0.01, 3600),
        "Wait before the first retry of a mail the SMTP server did not take; doubling each "
        "time, at most an hour.", unit="seconds")
    mail_max_attempts: int = setting(
        Integer(1, 100), "Attempts of one mail before it is given up (logged).", unit="attempts")
    email_verification_ttl: int = setting(
        Integer(60, 30 * 86400), "How long an e-mail verification link works.", unit="seconds")
    password_reset_ttl: int = setting(
        Integer(60, 86400), "How long a password reset link works.", unit="seconds")
    rate_limit_mail: int = setting(
        Integer(1, 100000),
        "Password reset requests per submitted address and per account, and verification "
        "re-sends per account, per `SF_RATE_LIMIT_MAIL_WINDOW` (429 beyond).", unit="requests")
    rate_limit_mail_window: int = setting(
        Integer(1, 86400), "Window of `SF_RATE_LIMIT_MAIL`.", unit="seconds")
    backup_dir: Path = setting(
        ProjectPath(),
        "Where `sf backup` writes dumps and checksums; API nodes read it for "
        "`sf_backup_last_success_timestamp_seconds`. Empty: `<SF_VAR_DIR>/backups`.")
    backup_keep: int = setting(
        Integer(1, 10000), "`sf backup` keeps the newest this many dumps, removing older ones.",
        unit="dumps")
    backup_encryption_key: str = setting(
        Text(),
        "base64 of 32 bytes: the AES-GCM key `sf backup` encrypts archives with and `sf restore` "
        "needs (keep a copy away from the backups: without it they cannot be read). Empty: "
        "`var/secrets/backup_encryption_key`.")
    audit_log_file: Path = setting(
        ProjectPath(),
        "Append-only JSON lines, one per operator command that reads or restores people's "
        "data (`sf backup`, `sf restore`, …): who, what, when, which account. Empty: "
        "`<SF_VAR_DIR>/log/audit.jsonl`.")
    operator: str = setting(
        Text(), "Who runs operator commands, as the audit log names them; empty: the OS user.")
    privacy_policy_file: Path = setting(
        ProjectPath(),
        "The operator's privacy policy (Markdown after a front matter giving `version` and "
        "`effective_at`), served at `/api/legal/privacy-policy`; registering accepts its "
        "version. Read at start-up.")
    erasure_grace_days: float = setting(
        Number(0, 365),
        "An account deleted by its owner (`DELETE /api/users/profile`) is hidden at once; its "
        "personal data is destroyed this long after, unless the owner signs in with "
        "`\"restore\": true` before then.", unit="days")
    erased_username_reserve_days: float = setting(
        Number(0, 36500),
        "The username of a deleted account stays taken this long after the deletion (nobody "
        "can register it to pass for the person), then the erasure job frees it.", unit="days")
    media_node_heartbeat_ttl: float = setting(
        Number(1, 300),
        "A media node's heartbeat in Redis lives this long, renewed every third of it; a node "
        "silent for longer is dead and its live streams go offline (resumable on any node "
        "within `SF_PUBLISH_GRACE_SECONDS`).", unit="seconds")
    max_transcoders: int = setting(
        Integer(0, 1000),
        "Transcoded ladders a media node runs at once (0 = one per core: a 1080p ladder costs "
        "about a core); beyond, a publish is refused when another media node has room, else "
        "served source-only.", unit="ladders")
    transcode_cpu_max_percent: int = setting(
        Integer(1, 100),
        "No new ladder while the node's CPU was busier than this over the last ~5 s (100 = not "
        "checked).", unit="percent")
    transcode_min_account_age_minutes: int = setting(
        Integer(0, 525600), "Younger accounts are served source-only (0 = no check).",
        unit="minutes")
    publish_range_go_lives_per_hour: int = setting(
        Integer(0, 1000000),
        "Go-lives per hour from one /24 (IPv4) or /64 (IPv6); beyond, a publish is refused "
        "(0 = no limit).", unit="go-lives")
    publish_range_ladders: int = setting(
        Integer(0, 1000),
        "Ladders at once for publishers of one such range; beyond, source-only (0 = no limit).",
        unit="ladders")
    viewers_anonymous_per_network: int = setting(
        Integer(1, 100000),
        "Anonymous viewers counted per stream per /24 (IPv4) or /64 (IPv6) over all processes "
        "and nodes; the others stay connected and get the counts, uncounted.", unit="viewers")
    ws_handshakes_per_minute: int = setting(
        Integer(1, 1000000),
        "Viewer WebSocket handshakes per client address per minute, all nodes together (429 "
        "with `Retry-After` beyond).", unit="handshakes")
    viewer_min_dwell_seconds: float = setting(
        Number(0, 3600),
        "A viewer counts toward `unique_viewers` and watch time only once connected this long "
        "(the live count is immediate).", unit="seconds")
    # Personal data: exports, address retention, logged addresses (issue 21).
    ip_retention_days: int = setting(
        Integer(1, 3650),
        "Client addresses kept with login records (and streams' publish ranges) are erased "
        "after this.", unit="days")
    log_ip_mode: str = setting(
        Choice("raw", "truncate", "hash"),
        "How logs write client addresses: `raw`; `truncate` (the /24 of IPv4, the /48 of "
        "IPv6); `hash` (a keyed HMAC prefix, the same for one address within a deployment). "
        "nginx's access logs write the truncated form for both `truncate` and `hash`.")
    export_ttl_hours: int = setting(
        Integer(24, 720),
        "A personal data export can be downloaded (signed URL) for this long, then its file "
        "and row are deleted (at least a day: the rows count toward SF_EXPORTS_PER_DAY).",
        unit="hours")
    exports_per_day: int = setting(
        Integer(1, 1000), "Personal data exports a user may request per 24 hours (429 beyond).",
        unit="exports")
    export_stale_minutes: int = setting(
        Integer(1, 1440),
        "An export still pending after this (its node died while building it) is marked "
        "failed.", unit="minutes")
    jobs_interval_seconds: float = setting(
        Number(0.05, 86400),
        "Time between rounds of the scheduled jobs (address retention, expired and stale "
        "exports), run by one node at a time under a Redis leader lock.", unit="seconds")
    # Live chat (issue 22).
    chat_rate_messages: int = setting(
        Integer(1, 10000),
        "Chat messages one viewer may send per channel per `SF_CHAT_RATE_WINDOW_SECONDS` "
        "(`rate_limited` beyond).", unit="messages")
    chat_rate_moderator_messages: int = setting(
        Integer(1, 10000),
        "The same for the channel's owner and moderators.", unit="messages")
    chat_rate_window_seconds: int = setting(
        Integer(1, 3600), "The window of the chat rate limits.", unit="seconds")
    chat_duplicate_seconds: int = setting(
        Integer(1, 3600),
        "The same text from the same user in one channel within this is refused "
        "(`duplicate`).", unit="seconds")
    chat_retention_days: int = setting(
        Integer(1, 3650),
        "Chat messages and chat moderation log entries are deleted this long after they were "
        "made (a scheduled job).",
        unit="days")
    # Notifications (issue 23).
    notify_repeat_seconds: int = setting(
        Integer(0, 86400),
        "A channel going live again within this of its last go-live notice sends no new one "
        "(an encoder reconnecting within the resume grace continues its stream and never "
        "sends one).", unit="seconds")
    notify_fanout_batch: int = setting(
        Integer(100, 100000),
        "Followers told per batch of a go-live fan-out (one transaction and one pub/sub "
        "message each).", unit="followers")
    notifications_retention_days: int = setting(
        Integer(1, 3650),
        "Notifications are deleted this long after they were made (a scheduled job).",
        unit="days")
    vapid_private_key: str = setting(
        Text(),
        "Web Push (VAPID) signing key: base64url of a 32-byte P-256 private key; browsers "
        "subscribe with its public key (`GET /api/notifications/push/key`), so changing it "
        "ends every push subscription. Empty: `var/secrets/vapid_private_key`.")
    vapid_subject: str = setting(
        Text(),
        "The contact push services see in every Web Push (the VAPID `sub`): `mailto:` or "
        "`https://`. Empty: `mailto:` the address of `SF_MAIL_FROM`.")
    push_ttl_seconds: int = setting(
        Integer(0, 2419200),
        "How long a push service keeps a Web Push for a browser that is offline (its `TTL`).",
        unit="seconds")
    push_concurrency: int = setting(
        Integer(1, 1000), "Web Pushes one API process has in flight at once.", unit="requests")
    push_timeout_seconds: float = setting(
        Number(0.5, 60),
        "Longest one Web Push may take (connect, send, answer); then it counts as failed.",
        unit="seconds")
    outbound_allowed_networks: tuple[IPNetwork, ...] = setting(
        Networks(),
        "Networks webhooks and Web Push may reach although they are not public (loopback, "
        "private, link-local addresses are refused otherwise); empty by default.")
    outbound_nameservers: tuple[str, ...] = setting(
        ListOf(),
        "DNS servers (`host` or `host:port`, comma separated) that resolve the names of "
        "webhooks and Web Push endpoints; empty: the system's (resolv.conf).")
    # Webhooks (issue 23).
    webhooks_per_user: int = setting(
        Integer(1, 1000), "Webhooks one account may have (409 beyond).", unit="webhooks")
    webhook_timeout_seconds: float = setting(
        Number(0.5, 60),
        "Time one delivery attempt may take, connecting and answering together (a receiver "
        "that takes longer failed the attempt); at most 64 KiB of its answer is read.",
        unit="seconds")
    webhook_retry_seconds: float = setting(
        Number(0.01, 86400),
        "Wait after a delivery's first failed attempt; it doubles after each further one, up "
        "to `SF_WEBHOOK_RETRY_MAX_SECONDS`.", unit="seconds")
    webhook_retry_max_seconds: float = setting(
        Number(0.01, 86400), "Longest wait between two attempts of one delivery.",
        unit="seconds")
    webhook_give_up_seconds: float = setting(
        Number(1, 7 * 86400),
        "A delivery not made this long after its event (or its redelivery) is given up "
        "(`failed`).", unit="seconds")
    webhook_disable_after_failures: int = setting(
        Integer(1, 100000),
        "A webhook is disabled (its owner told by mail when their address is verified, and "
        "in the app) once this many attempts in a row failed ...", unit="attempts")
    webhook_disable_after_seconds: float = setting(
        Number(0, 30 * 86400),
        "... and the first of them is at least this old (a receiver down for a short while "
        "with much traffic is not disabled).", unit="seconds")
    webhook_follow_dedup_seconds: float = setting(
        Number(0, 30 * 86400),
        "One `follow.created` per follower and channel within this (follow/unfollow cycles "
        "cannot flood a receiver).", unit="seconds")
    webhook_deliveries_retention_days: int = setting(
        Integer(1, 3650),
        "Deliveries are deleted this long after their event, whatever their state (a "
        "scheduled job).", unit="days")
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def tls_enabled(self) -> bool:
        """True when the node serves HTTPS itself."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def max_request_bytes(self) -> int:
        """The server-level body cap (nginx, Tornado); handlers enforce their own tighter
        limit with a JSON 413."""
        return max(self.max_body_bytes, self.max_avatar_bytes) + 1024 * 1024

    @property
    def secrets_dir(self) -> Path:
        return self.var_dir / "secrets"

    @property
    def ingest_url(self) -> str:
        """Where this node's ingest process (process 0) takes nginx-rtmp's callbacks."""
        host = self.api_host if self.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.api_internal_port}"

    @property
    def public_base_url(self) -> str:
        """Where users reach the web front (links in mails), without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_enabled else "http"
        default_port = 443 if self.tls_enabled else 80
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        port = "" if self.http_port == default_port else f":{self.http_port}"
        return f"{scheme}://{host}{port}"

    @property
    def rtmp_url(self) -> str:
        """The ingest URL shown to streamers (OBS "Server")."""
        return f"rtmp://{self.public_host}:{self.rtmp_port}/live"

    def replace(self, **changes: object) -> Config:
        """A copy with some settings changed (tests, sub-commands)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def read_defaults(defaults_file: Path = DEFAULTS_FILE) -> dict[str, object]:
    """The settings' default values as conf/sf.toml writes them (not yet checked)."""
    try:
        with open(defaults_file, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {defaults_file}: {exc}") from exc


def load_config(environ: dict[str, str] | None = None, defaults_file: Path = DEFAULTS_FILE,
                secrets: tuple[str, ...] = SECRET_NAMES) -> Config:
    """Read conf/sf.toml, apply SF_* overrides, validate, and fill secrets from var/secrets.

    `secrets` are the secrets this process needs (an error when missing); the others are read
    if given and left empty otherwise (the edge machine never holds the API's keys).
    """
    environ = dict(os.environ if environ is None else environ)
    raw = read_defaults(defaults_file)
    known = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}
    missing = sorted(set(known) - set(raw))
    if missing:
        raise ConfigError(f"{defaults_file} lacks defaults for: {', '.join(missing)}")
    for name in known:
        env_value = environ.get(_env_name(name))
        if env_value is not None:
            raw[name] = env_value
    unknown = sorted(
        key for key in environ if key.startswith(ENV_PREFIX) and key[3:].lower() not in known
    )
    values: dict[str, object] = {}
    for name, spec in known.items():
        values[name] = spec.metadata["value"].parse(name, raw[name])
    var_dir = values["var_dir"]
    assert isinstance(var_dir, Path)
    if not str(raw["media_dir"]):
        values["media_dir"] = var_dir / "media"
    if not str(raw["backup_dir"]):
        values["backup_dir"] = var_dir / "backups"
    if not str(raw["audit_log_file"]):
        values["audit_log_file"] = var_dir / "log" / "audit.jsonl"
    if not values["media_node_url"]:
        values["media_node_url"] = f"http://127.0.0.1:{values['media_control_port']}"
    if not values["media_origin"]:
        values["media_origin"] = f"127.0.0.1:{values['media_http_port']}"
    if not values["edge_api_servers"]:
        api_host = str(values["api_host"])
        api_host = "127.0.0.1" if api_host in ("0.0.0.0", "::", "") else api_host
        values["edge_api_servers"] = (f"{api_host}:{values['api_port']}",)
    if not values["edge_media_origins"]:
        values["edge_media_origins"] = (values["media_origin"],)
    if not values["node_id"]:
        values["node_id"] = f"{socket.gethostname()}-{values['api_port']}"
    if values["database_pool_min"] > values["database_pool_max"]:  # type: ignore[operator]
        raise ConfigError("SF_DATABASE_POOL_MIN must not exceed SF_DATABASE_POOL_MAX")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError("SF_TLS_CERT and SF_TLS_KEY must be set together")
    for name in ("tls_cert", "tls_key"):
        if values[name] and not Path(str(values[name])).is_file():
            raise ConfigError(f"{_env_name(name)}: file {values[name]} does not exist")
    for name in ALL_SECRET_NAMES:
        path = var_dir / "secrets" / name
        if not values[name] and (name in secrets or path.exists()):
            values[name] = _read_secret(path, name)
    values["database_url"] = _with_password(
        str(values["database_url"]), var_dir / "secrets" / "postgres_password"
    )
    values["redis_url"] = _with_password(str(values["redis_url"]), var_dir / "secrets" / "redis_password")
    config = Config(**values, extra={k: environ[k] for k in unknown})  # type: ignore[arg-type]
    given = {name for name in ALL_SECRET_NAMES if name in secrets or values[name]}
    if "stream_key_encryption_keys" in given:
        parse_encryption_keys(config.stream_key_encryption_keys)
    if "backup_encryption_key" in given:
        parse_backup_key(config.backup_encryption_key)
    if "vapid_private_key" in given:
        parse_vapid_key(config.vapid_private_key)
    if not config.vapid_subject:
        address = parseaddr(config.mail_from)[1]
        config = config.replace(vapid_subject=f"mailto:{address}" if "@" in address else
                                config.public_base_url)
    if not re.fullmatch(r"mailto:[^\s@]+@[^\s@]+|https://[^\s/]+(/\S*)?", config.vapid_subject):
        raise ConfigError("SF_VAPID_SUBJECT: expected a mailto: address or an https:// URL, "
                          f"got {config.vapid_subject!r}")
    for name, least in (("jwt_secret", 32), ("stream_key_lookup_secret", 16),
                        ("internal_secret", 16)):
        if name in given and len(str(values[name])) < least:
            raise ConfigError(f"{_env_name(name)} must be at least {least} characters")
    return config


def _read_secret(path: Path, name: str) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{_env_name(name)} is not set and {path} does not exist: run `sf secrets init` "
            "(make run does it) or set the variable"
        ) from None


def _with_password(url: str, password_file: Path) -> str:
    """Add the locally generated service password to a URL that names none."""
    parts = urlsplit(url)
    if (parts.password or not password_file.exists()
            or parts.scheme in ("unix", *SENTINEL_SCHEMES)):
        return url
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return url
    password = quote(password_file.read_text().strip(), safe="")
    user = parts.username or ""
    netloc = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_url_path(url: str, path: str) -> str:
    """`url` pointing at another database / Redis db number: its path replaced by `path`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path.lstrip("/"), "", ""))


def parse_encryption_keys(spec: str) -> list[tuple[str, bytes]]:
    """Parse "id:base64key,..." into (key id, 32-byte key) pairs, the encrypting key first."""
    keys = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key_id, sep, encoded = part.partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            key = b""
        if not sep or not key_id or len(key) != 32:
            raise ConfigError(
                "SF_STREAM_KEY_ENCRYPTION_KEYS: expected 'id:base64(32 bytes)[,id:...]'"
            )
        keys.append((key_id, key))
    if not keys:
        raise ConfigError("SF_STREAM_KEY_ENCRYPTION_KEYS: no key configured")
    if len({key_id for key_id, _ in keys}) != len(keys):
        raise ConfigError("SF_STREAM_KEY_ENCRYPTION_KEYS: key ids must be unique")
    return keys


def parse_backup_key(spec: str) -> bytes:
    """The 32-byte key of SF_BACKUP_ENCRYPTION_KEY (base64)."""
    try:
        key = base64.b64decode(spec.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError("SF_BACKUP_ENCRYPTION_KEY: expected base64 of 32 bytes")
    return key


def parse_vapid_key(spec: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of SF_VAPID_PRIVATE_KEY (base64url of its 32-byte scalar, the form
    web-push libraries use)."""
    text = spec.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if len(raw) != 32 or not re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
            raise ValueError
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except (ValueError, binascii.Error):
        raise ConfigError("SF_VAPID_PRIVATE_KEY: expected base64url of a 32-byte P-256 "
                          "private key") from None


def new_vapid_key() -> str:
    """A fresh SF_VAPID_PRIVATE_KEY."""
    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    return base64.urlsafe_b64encode(scalar.to_bytes(32, "big")).rstrip(b"=").decode()


def new_encryption_key_spec(key_id: str) -> str:
    """A fresh "id:base64key" entry for SF_STREAM_KEY_ENCRYPTION_KEYS."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def ensure_secrets(var_dir: Path) -> list[str]:
    """Create missing secret files under var/secrets (mode 600); return the names created."""
    directory = var_dir / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    generators = {
        "jwt_secret": lambda: secrets.token_urlsafe(48),
        "stream_key_encryption_keys": lambda: new_encryption_key_spec("k1"),
        "stream_key_lookup_secret": lambda: secrets.token_urlsafe(32),
        "internal_secret": lambda: secrets.token_urlsafe(32),
        "backup_encryption_key": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        "vapid_private_key": new_vapid_key,
        "postgres_password": lambda: secrets.token_urlsafe(24),
        "redis_password": lambda: secrets.token_urlsafe(24),
    }
    created = []
    for name, generate in generators.items():
        path = directory / name
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate() + "\n")
        created.append(name)
    return created


def bootstrap_var_dir(environ: dict[str, str] | None = None) -> Path:
    """The var directory as configured, read before the secrets exist."""
    environ = dict(os.environ if environ is None else environ)
    raw = environ.get("SF_VAR_DIR")
    if raw is None:
        raw = str(read_defaults()["var_dir"])
    path = Path(raw)
    return path if path.is_absolute() else PROJECT_ROOT / path
