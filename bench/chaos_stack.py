"""bench/chaos.py's stack: its own PostgreSQL cluster and Redis server, nginx in front of two
API nodes, the publisher, on ports reserved for this run (harness.ports)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.client import http, push_rtmp  # noqa: E402
from harness.measure import log  # noqa: E402
from harness.ports import reserve_ports  # noqa: E402
from sf.config import ensure_secrets, load_config  # noqa: E402
from sf.media import nginx  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402
from sf.media.process import stop as stop_process  # noqa: E402
from sf.node.localservices import LocalPostgres, LocalRedis, port_open  # noqa: E402

# Reserved when the bench starts (nothing else on the machine takes them while it runs).
(HTTP_PORT, CONTROL_PORT, RTMP_PORT, MEDIA_HTTP_PORT, PG_PORT, REDIS_PORT,
 A_API, A_INTERNAL, B_API, B_INTERNAL) = reserve_ports(10)
NODE_PORTS = {"A": (A_API, A_INTERNAL), "B": (B_API, B_INTERNAL)}  # (SF_API_PORT, SF_API_INTERNAL_PORT)
DATABASE = "sf_chaos"


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `check()` passed, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def media_playlist(text: str) -> tuple[int, list[str]]:
    """(#EXT-X-MEDIA-SEQUENCE, segment URIs) of an HLS media playlist."""
    sequence, segments = -1, []
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line and not line.startswith("#"):
            segments.append(line)
    return sequence, segments


# --- the stack: everything the faults touch, started here ---------------------------------------

class Stack:
    """Own PostgreSQL cluster, Redis server, nginx, API nodes A and B, and the publisher."""

    def __init__(self, work: Path) -> None:
        self.work = work
        var = work / "var"
        ensure_secrets(var)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
        self.env = {
            **inherited,
            "SF_VAR_DIR": str(var), "SF_MEDIA_DIR": str(work / "media"),
            "SF_DATABASE_URL": f"postgresql://sf@127.0.0.1:{PG_PORT}/{DATABASE}",
            "SF_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
            "SF_HTTP_PORT": str(HTTP_PORT), "SF_RTMP_PORT": str(RTMP_PORT),
            "SF_MEDIA_CONTROL_PORT": str(CONTROL_PORT), "SF_API_PROCESSES": "1",
            "SF_MEDIA_HTTP_PORT": str(MEDIA_HTTP_PORT),
            # The edge balances over both API nodes (node A takes the RTMP callbacks).
            "SF_EDGE_API_SERVERS": ",".join(f"127.0.0.1:{api}" for api, _ in NODE_PORTS.values()),
            "SF_RATE_LIMIT_ANONYMOUS": "100000000", "SF_RATE_LIMIT_USER": "100000000",
            "SF_RATE_LIMIT_AUTHENTICATED_IP": "100000000", "SF_RATE_LIMIT_AUTH_NETWORK": "100000000",
            "SF_RATE_LIMIT_AUTH_NODE": "100000000", "SF_ACCOUNTS_PER_RANGE_PER_DAY": "100000000",
            "SF_RATE_LIMIT_AUTH_IP": "100000000", "SF_RATE_LIMIT_AUTH_ACCOUNT": "100000000",
            "SF_BCRYPT_ROUNDS": "4", "SF_ACCESS_TOKEN_TTL": "7200",
            "SF_TRANSCODE_PRESET": "ultrafast", "SF_LOG_LEVEL": "INFO", "SF_ENV": "production",
        }
        self.config = load_config(self.node_env("A"))
        self.postgres = LocalPostgres(self.config)
        self.redis = LocalRedis(self.config)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.front: nginx.Front | None = None
        self.publisher: subprocess.Popen[bytes] | None = None
        self.stream_key = ""

    def node_env(self, name: str) -> dict[str, str]:
        api_port, internal_port = NODE_PORTS[name]
        return {**self.env, "SF_API_PORT": str(api_port),
                "SF_API_INTERNAL_PORT": str(internal_port), "SF_NODE_ID": f"chaos-{name}"}

    def start(self) -> None:
        busy = [port for port in (HTTP_PORT, CONTROL_PORT, RTMP_PORT, MEDIA_HTTP_PORT, PG_PORT,
                                  REDIS_PORT,
                                  *(p for pair in NODE_PORTS.values() for p in pair))
                if port_open(port)]
        if busy:
            raise RuntimeError(f"ports already in use: {busy} (another chaos run?)")
        log(f"PostgreSQL cluster in {self.postgres.data_dir}")
        self.postgres.start()
        self.redis.start()
        migrated = subprocess.run([sys.executable, "-m", "sf.app", "migrate"],
                                  env=self.node_env("A"), cwd=ROOT, capture_output=True, text=True)
        if migrated.returncode != 0:
            raise RuntimeError(f"sf migrate failed: {migrated.stderr[-2000:]}")
        self.front = nginx.Front(self.config).start()
        for name in NODE_PORTS:
            self.start_node(name)
        for name in NODE_PORTS:
            if poll(functools.partial(self.node_ready, name), 60, 0.2) is None:
                raise RuntimeError(f"API node {name} did not become ready: {self.log_tail(name)}")

    def start_node(self, name: str) -> None:
        output = open(self.work / f"api-{name}.log", "ab")  # noqa: SIM115 (the child holds it)
        try:
            self.nodes[name] = subprocess.Popen(
                [sys.executable, "-m", "sf.app", "serve"], env=self.node_env(name), cwd=ROOT,
                stdout=output, stderr=output, stdin=subprocess.DEVNULL,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        finally:
            output.close()

    def stop_node(self, name: str, timeout: float = 30) -> float:
        """SIGTERM and wait; the seconds the node took to exit (killed after `timeout`)."""
        process = self.nodes[name]
        start = time.monotonic()
        stop_process(process, timeout=timeout)
        return time.monotonic() - start

    def node_url(self, name: str) -> str:
        return f"http://127.0.0.1:{NODE_PORTS[name][0]}"

    def node_ready(self, name: str) -> bool:
        process = self.nodes[name]
        if process.poll() is not None:
            raise RuntimeError(f"API node {name} exited ({process.returncode}): "
                               f"{self.log_tail(name)}")
        return http(self.node_url(name) + "/readyz", timeout=2)[0] == 200

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            text = (self.work / f"api-{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def publish(self, seconds: float) -> None:
        """The streamer's encoder: testsrc2 + a tone as H.264/AAC over RTMP, in real time."""
        self.publisher = push_rtmp(f"rtmp://127.0.0.1:{RTMP_PORT}/live/{self.stream_key}",
                                   size="640x360", rate=20, seconds=int(seconds),
                                   audio_bitrate="64k", preexec_fn=die_with_parent)

    def transcoder_pids(self, stream_id: int) -> list[int]:
        """The FFmpeg processes pulling the stream (not the publisher, which pushes)."""
        result = subprocess.run(["pgrep", "-f", "--", f"-i rtmp://127.0.0.1:{RTMP_PORT}"
                                 f"/live/{stream_id}( |$)"], capture_output=True, text=True)
        return [int(pid) for pid in result.stdout.split()]

    def kill_redis(self) -> None:
        """SIGKILL the Redis server (a crash: no shutdown save, the AOF is what survives)."""
        pid = int(self.redis.pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        if poll(lambda: not port_open(REDIS_PORT), 10, 0.05) is None:
            raise RuntimeError("Redis still accepts connections after SIGKILL")
        # The daemon is not our child: nobody may reap it, and a zombie still answers kill(0).
        self.redis.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.publisher and self.publisher.poll() is None:
            self.publisher.kill()
            self.publisher.wait()
        for name in list(self.nodes):
            self.stop_node(name)
        if self.front is not None:
            self.front.stop()
        if self.redis.pid_file.exists():
            self.redis.stop()
        self.postgres.stop()

    def node_warnings(self) -> Counter[str]:
        """WARNING/ERROR lines of both nodes' logs, by message."""
        found: Counter[str] = Counter()
        for name in NODE_PORTS:
            try:
                lines = (self.work / f"api-{name}.log").read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    if line.strip():
                        found[f"{name} raw: {line[:110]}"] += 1
                    continue
                if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR",
                                                                         "CRITICAL"):
                    message = str(record.get("message", "")).replace("\n", " ")[:110]
                    found[f"{name} {record['level']}: {message}"] += 1
        return found
