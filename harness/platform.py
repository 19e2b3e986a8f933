"""The one way tests and benchmarks start a platform: nginx (HTTP + RTMP) + `sf serve`.

`Platform` is a whole node on ports reserved by `harness.ports`, driven from outside: publishers
are FFmpeg processes sending a small synthetic H.264 + AAC source over RTMP, as OBS would, and
everything is checked over HTTP/RTMP and on disk, never through internals. Bench stacks that
need a different shape (a Redis server of their own, an API node pinned to a CPU, two nodes
behind one nginx) build it from the same pieces: `node_ports`, `node_env`, `spawn_api`,
`wait_ready`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from harness import client
from harness.ports import reserve_port, reserve_ports
from harness.slots import MEDIA_REDIS_DB
from sf.config import Config, load_config, with_url_path
from sf.media import nginx
from sf.media.process import stop as terminate
from sf.redis_client import open_sync_redis


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2,
             what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def redis_up(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


NODE_PORTS = 8  # public HTTP, API, media control, RTMP, internal (one per API process), media HTTP


def node_ports() -> dict[str, str]:
    """The SF_*_PORT settings of one node, on consecutive reserved ports (the API processes'
    internal ports follow SF_API_INTERNAL_PORT: up to three of them)."""
    base = reserve_ports(NODE_PORTS)[0]
    return {"SF_HTTP_PORT": str(base), "SF_API_PORT": str(base + 1),
            "SF_MEDIA_CONTROL_PORT": str(base + 2), "SF_RTMP_PORT": str(base + 3),
            "SF_API_INTERNAL_PORT": str(base + 4), "SF_MEDIA_HTTP_PORT": str(base + 7)}


def node_env(var_dir: Path, media_dir: Path, database_url: str, redis_url: str,
             base_env: dict[str, str] | None = None, /, **settings: str) -> dict[str, str]:
    """The environment of a node's processes: its own var and media dirs, reserved ports, the
    given database and Redis, then `settings` (SF_* names) over all of it."""
    return {**(os.environ if base_env is None else base_env),
            "SF_VAR_DIR": str(var_dir), "SF_MEDIA_DIR": str(media_dir),
            "SF_DATABASE_URL": database_url, "SF_REDIS_URL": redis_url,
            **node_ports(), **settings}


def copy_secrets(source_var_dir: Path, var_dir: Path) -> None:
    """Give a node the project's secrets (the database and Redis passwords among them)."""
    (var_dir / "secrets").mkdir(parents=True, exist_ok=True)
    for secret in (source_var_dir / "secrets").iterdir():
        shutil.copy(secret, var_dir / "secrets" / secret.name)


def spawn_api(env: dict[str, str], log_path: Path, *,
              preexec_fn: Callable[[], Any] | None = None) -> subprocess.Popen[bytes]:
    """Start an API node (`sf serve` of this checkout) with `env`, its output to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "sf.app", "serve"], env=env, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30,
               what: str = "the API node") -> None:
    """Until GET `url`/readyz answers 200; RuntimeError if `process` exits first."""
    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode})")
        return client.http(url + "/readyz", timeout=2)[0] == 200

    wait_for(ready, timeout, what=what)


def hls_ready(platform: Platform, stream_id: int, segments: int = 2) -> bool:
    """The stream's master playlist and every variant with at least `segments` segments."""
    status, body, _ = platform.get(f"/hls/{stream_id}/master.m3u8")
    if status != 200:
        return False
    variants = [line for line in body.decode().splitlines() if line.endswith(".m3u8")]
    for variant in variants:
        status, media, _ = platform.get(f"/hls/{stream_id}/{variant}")
        if status != 200 or media.decode().count("#EXTINF") < segments:
            return False
    return bool(variants)


def start_platforms(*platforms: Platform) -> tuple[Platform, ...]:
    """Start each in turn; if one fails, stop the ones already started."""
    started: list[Platform] = []
    try:
        for platform in platforms:
            started.append(platform.start())
    except BaseException:
        for platform in reversed(started):
            platform.stop()
        raise
    return platforms


class Platform:
    """nginx (HTTP + RTMP) and one API node on their own ports, media in a temp dir."""

    def __init__(self, base: Config, workdir: Path, *, edge: bool = True,
                 **overrides: str) -> None:
        self.workdir = workdir
        self.edge = edge  # False: a media node behind another platform's edge
        var_dir = workdir / "var"
        copy_secrets(base.var_dir, var_dir)
        settings = {
            "SF_API_PROCESSES": "2",
            "SF_TRANSCODE_PRESET": "ultrafast", "SF_PUBLISH_GRACE_SECONDS": "4",
            "SF_SWEEP_INTERVAL": "0.5", "SF_THUMBNAIL_INTERVAL": "2", "SF_BCRYPT_ROUNDS": "4",
            "SF_PASSWORD_CHECKS_MAX_PENDING": "1000",
            "SF_SEGMENT_RETENTION_SECONDS": "3", "SF_LOG_LEVEL": "INFO",
            "SF_RATE_LIMIT_AUTH_IP": "1000", "SF_RATE_LIMIT_KEY_RESET": "1000",
            # Signed-in traffic, sign-ins and sign-ups of many accounts from 127.0.0.1 (tests/
            # test_signin.py and test_login_flood.py set the aggregate limits they test).
            "SF_RATE_LIMIT_AUTH_NETWORK": "10000", "SF_ACCOUNTS_PER_RANGE_PER_DAY": "10000",
            "SF_RATE_LIMIT_AUTH_NODE": "100000", "SF_RATE_LIMIT_AUTHENTICATED_IP": "10000000",
            # Transcoder admission off: tests register accounts and publish from 127.0.0.1 at
            # once, expecting a ladder, on a machine busy with other suites (tests/
            # test_admission.py turns each limit on).
            "SF_MAX_TRANSCODERS": "64", "SF_TRANSCODE_CPU_MAX_PERCENT": "100",
            "SF_TRANSCODE_MIN_ACCOUNT_AGE_MINUTES": "0", "SF_PUBLISH_RANGE_GO_LIVES_PER_HOUR": "0",
            "SF_PUBLISH_RANGE_LADDERS": "0",
            "SF_SMTP_URL": base.smtp_url,  # the tests' receiver (harness/smtp.py), not :8025
            **overrides,
        }
        self.env = node_env(var_dir, workdir / "media", base.database_url,
                            with_url_path(base.redis_url, str(MEDIA_REDIS_DB)), **settings)
        self.config = load_config(self.env)
        # What nginx is rendered with: a test may give nginx TLS while the API stays plain HTTP.
        self.nginx_config = self.config
        self.ssl_context: ssl.SSLContext | None = None  # trusts the test certificate then
        self.base_url = f"http://127.0.0.1:{self.config.http_port}"
        self.rtmp = f"rtmp://127.0.0.1:{self.config.rtmp_port}/live"
        self.api_log = workdir / "api.log"
        self.front: nginx.Front | None = None
        self.api_process: subprocess.Popen[bytes] | None = None
        self.publishers: list[subprocess.Popen[bytes]] = []

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Platform:
        # Rate-limit windows start afresh: the platforms of earlier tests share this Redis
        # database and 127.0.0.1, and a test that raised its own limits (a steady client
        # through rolling restarts) would spend the default budget of the next one. So do
        # failed-password counts (sf:lf:), kept by account id, which every fresh database
        # hands out from 1 again.
        # So do viewer counts, peaks and unique viewers: they are kept by stream id, and every
        # test session's fresh database numbers its streams from 1 again.
        with open_sync_redis(self.config.redis_url) as client:
            for pattern in ("sf:rl:*", "sf:lf:*", "sf:vc:*", "sf:uv:*"):
                for key in client.scan_iter(pattern, count=1000):
                    client.delete(key)
        self.front = nginx.Front(self.nginx_config, edge=self.edge).start()
        self.start_api()
        try:
            # Its own API node answering, and (with an edge) the edge too: an edge that also
            # fronts other nodes' APIs answers /readyz before this node's API is up.
            own = {"url": f"http://127.0.0.1:{self.config.api_port}"}
            wait_for(lambda: self._node_ready(own) and (not self.edge or self._ready()), 30,
                     what="the API behind nginx")
        except BaseException:
            self.stop()  # never leave nginx or API processes holding the ports
            raise
        return self

    def start_api(self) -> subprocess.Popen[bytes]:
        """(Re)start this platform's API node (`sf serve`), not waiting for it."""
        self.api_process = spawn_api(self.env, self.api_log)
        return self.api_process

    def _ready(self) -> bool:
        try:
            return self.request("GET", "/readyz")[0] == 200
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL everything of this node at once, as when its machine dies: nginx (master and
        workers), the API processes and their FFmpeg children."""
        roots = [process.pid for process in (self.front.processes if self.front else [])]
        if self.api_process is not None:
            roots.append(self.api_process.pid)
        doomed, queue = set(), list(roots)
        while queue:
            pid = queue.pop()
            doomed.add(pid)
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
            queue.extend(int(child) for child in children.stdout.split() if int(child) not in doomed)
        # Frozen first, then killed: nothing of the node may react to another part dying. An
        # nginx master would start a new worker (an orphan that keeps the port), the API
        # supervisor would restart a child, and a child told of its parent's death (SIGTERM)
        # would drain and withdraw from the media node registry: a stop, not a death.
        ordered = [*roots, *(pid for pid in doomed if pid not in roots)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in ordered:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        for process in [*(self.front.processes if self.front else []), self.api_process]:
            if process is not None:
                process.wait()
        if self.front is not None:
            self.front.processes.clear()

    def stop(self) -> None:
        for publisher in self.publishers:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        if self.api_process and self.api_process.poll() is None:
            terminate(self.api_process)
        if self.front:
            self.front.stop()

    def start_api_node(self, media_dir: Path, port: int | None = None) -> dict[str, Any]:
        """Another API node sharing PostgreSQL and Redis, as on another machine (own media
        dir, no nginx-rtmp next to it), on `port` (reserved by the caller) or a port of its
        own; reach it with `request_node`."""
        port = port or reserve_port()
        internal_port = reserve_port()
        env = {**self.env, "SF_API_PORT": str(port), "SF_API_INTERNAL_PORT": str(internal_port),
               "SF_API_PROCESSES": "1", "SF_MEDIA_DIR": str(media_dir)}
        log = open(self.workdir / f"api-{port}.log", "ab")  # noqa: SIM115 (closed with the node)
        process = subprocess.Popen([sys.executable, "-m", "sf.app", "serve"], env=env,
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        node = {"process": process, "url": f"http://127.0.0.1:{port}", "log": log}
        try:
            wait_for(lambda: self._node_ready(node), 30, what="the second API node")
        except BaseException:
            self.stop_api_node(node)
            raise
        return node

    def _node_ready(self, node: dict[str, Any]) -> bool:
        try:
            return self.request_node(node, "GET", "/readyz")[0] == 200
        except (OSError, ValueError):
            return False

    def request_node(self, node: dict[str, Any], method: str, path: str, body: Any = None,
                     token: str | None = None) -> tuple[int, Any, dict[str, str]]:
        """A request straight to another API node (not through this platform's nginx)."""
        base, self.base_url = self.base_url, node["url"]
        try:
            return self.request(method, path, body, token=token)
        finally:
            self.base_url = base

    def stop_api_node(self, node: dict[str, Any]) -> None:
        process = node["process"]
        if process.poll() is None:
            terminate(process)
        node["log"].close()

    # --- clients -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                raw: bool = False, headers: dict[str, str] | None = None
                ) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=15, context=self.ssl_context) as response:
                status, payload, response_headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, payload, response_headers = error.code, error.read(), error.headers
        if raw:
            return status, payload, dict(response_headers)
        return status, json.loads(payload) if payload else None, dict(response_headers)

    def register(self, username: str) -> dict[str, Any]:
        """A new account: {"token", "user", "key"} (its access token, user and stream key)."""
        body = client.register(self.base_url, username, context=self.ssl_context)
        key = client.stream_key(self.base_url, body["access_token"], context=self.ssl_context)
        return {"token": body["access_token"], "user": body["user"], "key": key}

    def publish(self, key: str, size: str = "640x360", rate: int = 24,
                seconds: float = 60) -> subprocess.Popen[bytes]:
        """An FFmpeg publisher sending testsrc2 + a sine tone as H.264/AAC in FLV, in real time."""
        process = client.push_rtmp(f"{self.rtmp}/{key}", size=size, rate=rate, seconds=seconds,
                                   stderr=subprocess.PIPE)
        self.publishers.append(process)
        return process

    def go_live(self, username: str, timeout: float = 20,
                **publish: Any) -> tuple[dict[str, Any], subprocess.Popen[bytes], dict[str, Any]]:
        """Register `username`, publish (options as `publish`) and wait for the stream to be
        listed live: (the account as `register` gives it, the publisher, the stream)."""
        user = self.register(username)
        publisher = self.publish(user["key"], **publish)
        stream = wait_for(lambda: self.live_stream_of(username), timeout,
                          what="the stream to go live")
        return user, publisher, stream

    def live_stream_of(self, username: str) -> dict[str, Any] | None:
        return client.live_stream_of(self.base_url, username, context=self.ssl_context)

    def stream(self, stream_id: int, token: str | None = None) -> dict[str, Any]:
        status, body, _ = self.request("GET", f"/api/streams/{stream_id}", token=token)
        assert status == 200, body
        return body

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        return self.request("GET", path, raw=True)

    def transcoder_pids(self, stream_id: int) -> list[int]:
        """FFmpeg processes pulling this stream (the transcoders, not the publisher)."""
        result = subprocess.run(["pgrep", "-f", "--", f"-i rtmp://127.0.0.1:{self.config.rtmp_port}"
                                 f"/live/{stream_id}( |$)"], capture_output=True, text=True)
        return [int(pid) for pid in result.stdout.split()]

    def media_sequence(self, path: str) -> int | None:
        status, body, _ = self.get(path)
        if status != 200:
            return None
        for line in body.decode().splitlines():
            if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                return int(line.split(":")[1])
        return None

    def logs(self) -> str:
        texts = [self.api_log.read_text(errors="replace")]
        for path in (self.config.var_dir / "log").glob("*"):
            texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)
