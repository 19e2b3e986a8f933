"""A Redis Sentinel group of real processes for tests and benchmarks: a primary, a replica and
three `redis-sentinel`s (quorum 2) on reserved ports, every one with a password.

    group = SentinelGroup(tmp_path / "redis").start()
    url = group.url(0)                 # SF_REDIS_URL: redis+sentinel://…/sf/0?sentinel_password=…
    old = group.kill_primary()         # SIGKILL; the sentinels fail over to the replica
    new, seconds = group.wait_failover(old)
    group.restart(old)                 # back as a replica of the new primary
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from harness.platform import wait_for
from harness.ports import reserve_port

SERVICE = "sf"
# How long a silent primary takes to be judged down, and the failover's own time limit.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class SentinelGroup:
    def __init__(self, work: Path, *, down_after_ms: int = DOWN_AFTER_MS,
                 tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) every server and sentinel speaks TLS only with (the
        certificate is also the CA clients check it against)."""
        self.work = work
        self.tls = tls
        self.down_after_ms = down_after_ms
        self.password = secrets.token_urlsafe(16)
        self.sentinel_password = secrets.token_urlsafe(16)
        self.server_ports = [reserve_port(), reserve_port()]
        self.sentinel_ports = [reserve_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SentinelGroup:
        self.work.mkdir(parents=True, exist_ok=True)
        primary, replica = self.server_ports
        self.start_server(primary)
        self.start_server(replica, replica_of=primary)
        wait_for(lambda: self.info(replica).get("master_link_status") == "up", 20,
                 what="the replica in sync")
        for port in self.sentinel_ports:
            self.start_sentinel(port, primary)
        # Every sentinel knows the replica and the other two (needed to reach the quorum).
        wait_for(self.sentinels_agree, 30,
                 what="the sentinels to find each other and the replica")
        return self

    def start_server(self, port: int, replica_of: int | None = None) -> None:
        directory = self.work / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        conf = directory / "redis.conf"
        lines = [*self.listen(port), "bind 127.0.0.1", f"dir {directory}", 'save ""',
                 "appendonly no", f"requirepass {self.password}",
                 f"masterauth {self.password}", f"logfile {directory / 'redis.log'}"]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        if not conf.exists():  # a restarted server keeps what the sentinels rewrote in it
            conf.write_text("\n".join(lines) + "\n")
        self.processes[port] = subprocess.Popen(
            [self.program("redis-server"), str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(port), 10, 0.05, f"redis-server on {port}")

    def start_sentinel(self, port: int, primary: int) -> None:
        directory = self.work / f"sentinel-{port}"
        directory.mkdir(exist_ok=True)
        conf = directory / "sentinel.conf"  # the sentinel rewrites it: writable, its own
        conf.write_text("\n".join([
            *self.listen(port), "bind 127.0.0.1", f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}",
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
            f"sentinel auth-pass {SERVICE} {self.password}",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1"]) + "\n")
        self.processes[port] = subprocess.Popen(
            [self.program("redis-sentinel"), str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(port, self.sentinel_password), 10, 0.05,
                 f"sentinel on {port}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait()

    # --- what SF is given ----------------------------------------------------------------------

    def listen(self, port: int) -> list[str]:
        """The configuration lines of a server or sentinel listening on `port`."""
        if self.tls is None:
            return [f"port {port}"]
        cert, key = self.tls
        return ["port 0", f"tls-port {port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                f"tls-ca-cert-file {cert}", "tls-auth-clients no", "tls-replication yes"]

    def url(self, db: int = 0) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        scheme, tls = "redis+sentinel", ""
        if self.tls is not None:
            scheme, tls = "rediss+sentinel", f"&ssl_ca_certs={self.tls[0]}"
        return (f"{scheme}://:{self.password}@{sentinels}/{SERVICE}/{db}"
                f"?sentinel_password={self.sentinel_password}{tls}")

    def connect(self, port: int, password: str, **options: object) -> redis.Redis:
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[0]))
        return redis.Redis(host="127.0.0.1", port=port, password=password,  # type: ignore[arg-type]
                           **options)

    def client(self, port: int, db: int = 0) -> redis.Redis:
        """A direct client of one server (not through the sentinels)."""
        return self.connect(port, self.password, db=db, socket_timeout=2)

    # --- faults --------------------------------------------------------------------------------

    def primary(self) -> int:
        """The primary's port as the sentinels name it."""
        for port in self.sentinel_ports:
            try:
                with self.connect(port, self.sentinel_password, socket_timeout=1) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                    if address:
                        return int(address[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answered")

    def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = self.primary()
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()
        return port

    def wait_failover(self, old: int, timeout: float = 30) -> tuple[int, float]:
        """(the new primary's port, seconds until the sentinels named it and it took writes)."""
        started = time.monotonic()

        def promoted() -> int | None:
            try:
                port = self.primary()
            except RuntimeError:
                return None
            return port if port != old and self.info(port).get("role") == "master" else None

        port = wait_for(promoted, timeout, 0.05, "the failover")
        return port, time.monotonic() - started

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start a killed server again and wait until the sentinels made it a replica of the
        primary, in sync (they look at a returning server every 10 s or so)."""
        self.start_server(port)
        wait_for(lambda: self.info(port).get("master_link_status") == "up", timeout, 0.2,
                 f"{port} to be a replica again")

    # --- inspection ----------------------------------------------------------------------------

    def ping(self, port: int, password: str | None = None) -> bool:
        try:
            with self.connect(port, password or self.password, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def info(self, port: int) -> dict[str, object]:
        try:
            with self.client(port) as client:
                return client.info("replication")
        except redis.RedisError:
            return {}

    def sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with self.connect(port, self.sentinel_password, socket_timeout=1) as sentinel:
                    state = sentinel.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    @staticmethod
    def program(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise RuntimeError(f"{name} not found: run scripts/bootstrap")
        return path
