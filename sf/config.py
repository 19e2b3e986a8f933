"""Configuration: defaults from conf/sf.toml, overridden by SF_* environment variables.

Every setting is typed and validated once at start-up, so a bad value stops the process with a
message that names the variable instead of failing later in some request.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "conf" / "sf.toml"
ENV_PREFIX = "SF_"

SECRET_NAMES = (
    "jwt_secret", "stream_key_encryption_keys", "stream_key_lookup_secret", "internal_secret"
)


class ConfigError(ValueError):
    """A setting has a value the platform cannot run with."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Config:
    """All settings of one SF node; build it with `load_config()`."""

    env: str
    log_level: str
    var_dir: Path
    public_host: str
    http_host: str
    http_port: int
    api_host: str
    api_port: int
    api_processes: int
    rtmp_port: int
    trusted_proxies: tuple[IPNetwork, ...]
    cors_origins: tuple[str, ...]
    tls_cert: str
    tls_key: str
    node_id: str
    database_url: str
    database_pool_min: int
    database_pool_max: int
    redis_url: str
    jwt_secret: str
    stream_key_encryption_keys: str
    stream_key_lookup_secret: str
    internal_secret: str
    access_token_ttl: int
    refresh_token_ttl: int
    bcrypt_rounds: int
    max_body_bytes: int
    max_avatar_bytes: int
    avatar_size: int
    avatar_max_pixels: int
    avatar_hosts: tuple[str, ...]
    rate_limit_window: int
    rate_limit_anonymous: int
    rate_limit_user: int
    rate_limit_auth_ip: int
    rate_limit_auth_account: int
    rate_limit_auth_account_ceiling: int
    rate_limit_key_reset: int
    cache_ttl: int
    media_dir: Path
    ffmpeg: str
    ffprobe: str
    nginx: str
    hls_segment_seconds: int
    hls_playlist_size: int
    thumbnail_interval: int
    transcode_preset: str
    ladder: tuple[int, ...]
    source_passthrough: bool
    publish_grace_seconds: int
    stream_liveness_timeout: int
    segment_retention_seconds: int
    media_nodes: tuple[IPNetwork, ...]
    real_ip_from: tuple[IPNetwork, ...]
    media_control_host: str
    media_control_port: int
    media_node_url: str
    playback_url_ttl: int
    sweep_interval: float
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def tls_enabled(self) -> bool:
        """True when the node serves HTTPS itself."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def secrets_dir(self) -> Path:
        return self.var_dir / "secrets"

    @property
    def rtmp_url(self) -> str:
        """The ingest URL shown to streamers (OBS "Server")."""
        return f"rtmp://{self.public_host}:{self.rtmp_port}/live"

    def replace(self, **changes: object) -> Config:
        """A copy with some settings changed (tests, sub-commands)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# --- parsing -----------------------------------------------------------------------------------

_RANGES: dict[str, tuple[int, int]] = {
    "http_port": (1, 65535),
    "api_port": (1, 65535),
    "rtmp_port": (1, 65535),
    "api_processes": (0, 64),
    "database_pool_min": (1, 100),
    "database_pool_max": (1, 500),
    "access_token_ttl": (30, 86400),
    "refresh_token_ttl": (300, 31536000),
    "bcrypt_rounds": (4, 16),
    "max_body_bytes": (1024, 10485760),
    "max_avatar_bytes": (1024, 52428800),
    "avatar_size": (16, 2048),
    "avatar_max_pixels": (1024, 200000000),
    "rate_limit_window": (1, 86400),
    "rate_limit_anonymous": (1, 10**9),
    "rate_limit_user": (1, 10**9),
    "rate_limit_auth_ip": (1, 10**9),
    "rate_limit_auth_account": (1, 10**9),
    "rate_limit_auth_account_ceiling": (1, 10**9),
    "rate_limit_key_reset": (1, 10**9),
    "cache_ttl": (0, 3600),
    "hls_segment_seconds": (1, 10),
    "hls_playlist_size": (2, 60),
    "thumbnail_interval": (1, 3600),
    "publish_grace_seconds": (0, 3600),
    "stream_liveness_timeout": (5, 3600),
    "segment_retention_seconds": (0, 86400),
    "media_control_port": (1, 65535),
    "playback_url_ttl": (30, 86400),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "env": ("development", "production", "test"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "transcode_preset": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
}


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_int(name: str, raw: object) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"{_env_name(name)}: expected an integer, got {raw!r}")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{_env_name(name)}: expected an integer, got {raw!r}") from None
    low, high = _RANGES.get(name, (-(2**63), 2**63))
    if not low <= value <= high:
        raise ConfigError(f"{_env_name(name)}: {value} is outside {low}..{high}")
    return value


def _parse_bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{_env_name(name)}: expected true/false, got {raw!r}")


def _parse_networks(name: str, raw: object) -> tuple[IPNetwork, ...]:
    networks = []
    for part in str(raw).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{_env_name(name)}: {part!r} is not an IP network") from None
    return tuple(networks)


def _parse_origins(name: str, raw: object) -> tuple[str, ...]:
    origins = []
    for part in str(raw).split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        parsed = urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
            raise ConfigError(f"{_env_name(name)}: {part!r} is not an origin like https://host")
        origins.append(part)
    return tuple(origins)


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _parse_hosts(name: str, raw: object) -> tuple[str, ...]:
    """Comma-separated DNS host names (no scheme, port, path or IP address), lower-cased."""
    hosts = []
    for part in str(raw).split(","):
        host = part.strip().lower().rstrip(".")
        if not host:
            continue
        labels = host.split(".")
        is_ip = True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            is_ip = False
        if is_ip or len(host) > 253 or len(labels) < 2 or not labels[-1][:1].isalpha() \
                or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(f"{_env_name(name)}: {part.strip()!r} is not a host name "
                              "like cdn.example.com")
        hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def _parse_ladder(name: str, raw: object) -> tuple[int, ...]:
    rungs = []
    for part in str(raw).split(","):
        part = part.strip()
        if not part:
            continue
        height = _parse_int(name, part)
        if height not in (1080, 720, 480, 360, 240):
            raise ConfigError(f"{_env_name(name)}: rung {height} is not one of 1080,720,480,360,240")
        rungs.append(height)
    if not rungs:
        raise ConfigError(f"{_env_name(name)}: at least one rung is needed")
    return tuple(sorted(set(rungs), reverse=True))


def _parse_url(name: str, raw: object, schemes: tuple[str, ...]) -> str:
    text = str(raw).strip()
    parsed = urlsplit(text)
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ConfigError(f"{_env_name(name)}: expected a {'/'.join(schemes)} URL, got {text!r}")
    return text


def _convert(name: str, raw: object, kind: object, root: Path) -> object:
    if name in _CHOICES:
        text = str(raw).strip()
        if text not in _CHOICES[name]:
            raise ConfigError(f"{_env_name(name)}: {text!r} is not one of {', '.join(_CHOICES[name])}")
        return text
    if name == "avatar_hosts":
        return _parse_hosts(name, raw)
    if kind == "int":
        return _parse_int(name, raw)
    if kind == "bool":
        return _parse_bool(name, raw)
    if kind == "float":
        try:
            number = float(str(raw))
        except ValueError:
            raise ConfigError(f"{_env_name(name)}: expected a number, got {raw!r}") from None
        if not 0.05 <= number <= 3600:
            raise ConfigError(f"{_env_name(name)}: {number} is outside 0.05..3600")
        return number
    if kind == "Path":
        path = Path(str(raw)) if str(raw) else Path()
        return path if path.is_absolute() else root / path
    if kind == "tuple[IPNetwork, ...]":
        return _parse_networks(name, raw)
    if kind == "tuple[str, ...]":
        return _parse_origins(name, raw)
    if kind == "tuple[int, ...]":
        return _parse_ladder(name, raw)
    if name == "database_url":
        return _parse_url(name, raw, ("postgresql", "postgres"))
    if name == "redis_url":
        return _parse_url(name, raw, ("redis", "rediss", "unix"))
    return str(raw)


def load_config(environ: dict[str, str] | None = None, defaults_file: Path = DEFAULTS_FILE) -> Config:
    """Read conf/sf.toml, apply SF_* overrides, validate, and fill secrets from var/secrets."""
    environ = dict(os.environ if environ is None else environ)
    try:
        with open(defaults_file, "rb") as handle:
            raw: dict[str, object] = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {defaults_file}: {exc}") from exc
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
    root = PROJECT_ROOT
    values: dict[str, object] = {}
    for name, spec in known.items():
        values[name] = _convert(name, raw[name], spec.type, root)
    var_dir = values["var_dir"]
    assert isinstance(var_dir, Path)
    if not str(raw["media_dir"]):
        values["media_dir"] = var_dir / "media"
    if not values["media_node_url"]:
        values["media_node_url"] = f"http://127.0.0.1:{values['media_control_port']}"
    if not values["node_id"]:
        values["node_id"] = f"{socket.gethostname()}-{values['api_port']}"
    if values["database_pool_min"] > values["database_pool_max"]:  # type: ignore[operator]
        raise ConfigError("SF_DATABASE_POOL_MIN must not exceed SF_DATABASE_POOL_MAX")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError("SF_TLS_CERT and SF_TLS_KEY must be set together")
    for name in ("tls_cert", "tls_key"):
        if values[name] and not Path(str(values[name])).is_file():
            raise ConfigError(f"{_env_name(name)}: file {values[name]} does not exist")
    for name in SECRET_NAMES:
        if not values[name]:
            values[name] = _read_secret(var_dir / "secrets" / name, name)
    values["database_url"] = _with_password(
        str(values["database_url"]), var_dir / "secrets" / "postgres_password"
    )
    values["redis_url"] = _with_password(str(values["redis_url"]), var_dir / "secrets" / "redis_password")
    config = Config(**values, extra={k: environ[k] for k in unknown})  # type: ignore[arg-type]
    parse_encryption_keys(config.stream_key_encryption_keys)
    if len(config.jwt_secret) < 32:
        raise ConfigError("SF_JWT_SECRET must be at least 32 characters")
    if len(config.stream_key_lookup_secret) < 16:
        raise ConfigError("SF_STREAM_KEY_LOOKUP_SECRET must be at least 16 characters")
    if len(config.internal_secret) < 16:
        raise ConfigError("SF_INTERNAL_SECRET must be at least 16 characters")
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
    if parts.password or not password_file.exists() or parts.scheme == "unix":
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
        with open(DEFAULTS_FILE, "rb") as handle:
            raw = str(tomllib.load(handle)["var_dir"])
    path = Path(raw)
    return path if path.is_absolute() else PROJECT_ROOT / path
