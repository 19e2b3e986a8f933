"""PostgreSQL and Redis for one machine, kept under var/ (used by `make run` and `make test`).

PostgreSQL refuses to run as root, so when we are root its commands run as the unprivileged
`postgres` user through `runuser`. Production deployments point SF_DATABASE_URL and
SF_REDIS_URL at managed servers and never call this module.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from sf.config import Config
from sf.redis_client import is_sentinel_url

log = logging.getLogger("sf.services")

PG_USER = "postgres"


class ServiceError(RuntimeError):
    """A local service could not be started or stopped."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} not found: run scripts/bootstrap to install PostgreSQL")
    return found


def postgres_program(name: str) -> str:
    """The path of a PostgreSQL program (pg_dump, pg_restore, ...) of the installed server's
    version, which the client tools must match or exceed; ServiceError if there is none."""
    return _pg_bin(name)


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if _is_root() else cmd


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _wait_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not open port {port} within {timeout:.0f}s")


def _postgres_base(var_dir: Path) -> Path:
    """var/postgres, unless we are root and the postgres user cannot reach it.

    A checkout under a 0700 directory (e.g. /root/...) is closed to the unprivileged server;
    then the cluster lives under /var/tmp, named after the checkout so two never collide.
    """
    preferred = var_dir / "postgres"
    if not _is_root():
        return preferred
    probe = preferred if preferred.exists() else var_dir
    probe.mkdir(parents=True, exist_ok=True)
    reachable = subprocess.run(["runuser", "-u", PG_USER, "--", "test", "-x", str(probe)],
                               capture_output=True).returncode == 0
    if reachable:
        return preferred
    digest = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"sf-postgres-{digest}"
    log.warning("%s is not reachable by the postgres user: cluster in %s", var_dir, fallback)
    return fallback


class LocalPostgres:
    """A PostgreSQL cluster in var/postgres, listening on the port of SF_DATABASE_URL."""

    def __init__(self, config: Config) -> None:
        url = urlsplit(config.database_url)
        self.port = url.port or 5432
        self.user = url.username or "sf"
        self.database = url.path.lstrip("/") or "sf"
        base = _postgres_base(config.var_dir)
        self.data_dir = base / "data"
        self.socket_dir = base / "run"
        self.log_file = base / "postgres.log"  # written by the postgres user: next to its data
        self.password_file = config.secrets_dir / "postgres_password"

    def _chown(self, path: Path) -> None:
        if _is_root():
            shutil.chown(path, PG_USER, PG_USER)

    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = subprocess.run(
            _as_pg([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
        )
        return result.returncode == 0

    def _psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            _as_pg([_pg_bin("psql"), "-h", str(self.socket_dir), "-p", str(self.port),
                    "-U", PG_USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql]),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _initdb(self) -> None:
        base = self.data_dir.parent
        base.mkdir(parents=True, exist_ok=True)
        self._chown(base)
        log.info("initialising PostgreSQL cluster in %s", self.data_dir)
        subprocess.run(
            _as_pg([_pg_bin("initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                    "--locale=C.UTF-8"]),
            check=True, capture_output=True,
        )

    def start(self) -> bool:
        """Start the cluster (creating it and the app role first); False if it already ran."""
        for path in (self.socket_dir, self.log_file.parent):
            path.mkdir(parents=True, exist_ok=True)
            self._chown(path)
        os.chmod(self.socket_dir, 0o700)
        if self.running():
            return False
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process (SF_DATABASE_URL)")
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=256MB -c fsync=on"
        )
        result = subprocess.run(
            _as_pg([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                    "-o", options, "-w", "-t", "60", "start"]),
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start: {result.stdout}{result.stderr}"
                               f" (see {self.log_file})")
        self._ensure_role()
        return True

    def _ensure_role(self) -> None:
        password = self.password_file.read_text().strip().replace("'", "''")
        exists = self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'")
        verb = "ALTER" if exists else "CREATE"
        self._psql(f"{verb} ROLE \"{self.user}\" LOGIN CREATEDB PASSWORD '{password}'")
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self._psql(f"CREATE DATABASE \"{self.database}\" OWNER \"{self.user}\"")

    def stop(self) -> None:
        if self.running():
            subprocess.run(
                _as_pg([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
                capture_output=True,
            )


class LocalRedis:
    """A Redis server in var/redis, listening on the port of SF_REDIS_URL."""

    def __init__(self, config: Config) -> None:
        url = urlsplit(config.redis_url)
        self.port = url.port or 6379
        self.dir = config.var_dir / "redis"
        self.pid_file = self.dir / "redis.pid"
        self.log_file = config.var_dir / "log" / "redis.log"
        self.password_file = config.secrets_dir / "redis_password"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def running(self) -> bool:
        return self._pid() is not None

    def start(self) -> bool:
        """Start Redis as a daemon; False if it already ran."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.running():
            return False
        if port_open(self.port):
            raise ServiceError(f"port {self.port} is taken by another process (SF_REDIS_URL)")
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise ServiceError("redis-server not found: run scripts/bootstrap")
        password = self.password_file.read_text().strip()
        conf = self.dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # Sessions must survive a restart, even a crash: the append-only file is fsynced every
        # second (a crash loses at most that), with RDB snapshots beside it in var/redis.
        with os.fdopen(fd, "w") as handle:
            handle.write(
                f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\n"
                f"requirepass {password}\ndaemonize yes\npidfile {self.pid_file}\n"
                f"logfile {self.log_file}\ndir {self.dir}\nsave 60 1000\n"
                "appendonly yes\nappendfsync everysec\nmaxclients 20000\n"
            )
        subprocess.run([redis_server, str(conf)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, "Redis")
        # Redis writes its pid file only after it listens; `stop` needs it.
        deadline = time.monotonic() + 10
        while not self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if self._pid() is None:
                return
            time.sleep(0.1)


def service_set(config: Config) -> dict[str, LocalPostgres | LocalRedis]:
    """The local services in start order (a Sentinel group's Redis is not a local one)."""
    services: dict[str, LocalPostgres | LocalRedis] = {"postgres": LocalPostgres(config)}
    if not is_sentinel_url(config.redis_url):
        services["redis"] = LocalRedis(config)
    return services


def start_all(config: Config) -> list[str]:
    """Start what is not running; return the names of the services this call started."""
    started = []
    for name, service in service_set(config).items():
        if service.start():
            started.append(name)
    return started


def stop_all(config: Config, names: list[str] | None = None) -> None:
    """Stop the named services (all of them by default), in reverse start order."""
    for name, service in reversed(list(service_set(config).items())):
        if names is None or name in names:
            service.stop()
