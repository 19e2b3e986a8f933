"""bench/chaos.py's stack, on ports reserved for this run (harness.ports): its own PostgreSQL
cluster; Redis as a Sentinel group (harness/sentinel.py: primary, replica, three sentinels);
two API nodes (`sf serve`) and two media nodes (`sf node --no-edge`: nginx-rtmp, origin, API
process, FFmpeg) behind one public edge (nginx, as `sf edge`); an RTMP balancer (nginx's TCP
proxy) in front of the media nodes; the publisher, pushing through the balancer."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
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
from harness.platform import copy_secrets, node_ports  # noqa: E402
from harness.ports import reserve_ports  # noqa: E402
from harness.sentinel import SentinelGroup  # noqa: E402
from harness.smtp import MailReceiver  # noqa: E402
from sf.config import ensure_secrets, load_config  # noqa: E402
from sf.media import nginx  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402
from sf.media.process import stop as stop_process  # noqa: E402
from sf.node.localservices import LocalPostgres, port_open  # noqa: E402

# Reserved when the bench starts (nothing else on the machine takes them while it runs).
(HTTP_PORT, CONTROL_PORT, BALANCER_PORT, PG_PORT,
 A_API, A_INTERNAL, B_API, B_INTERNAL) = reserve_ports(8)
NODE_PORTS = {"A": (A_API, A_INTERNAL), "B": (B_API, B_INTERNAL)}  # (SF_API_PORT, SF_API_INTERNAL_PORT)
MEDIA_PORTS = {"M1": node_ports(), "M2": node_ports()}  # the SF_*_PORT settings of each
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

def kill_tree(root: int) -> int:
    """SIGKILL a process and all its descendants at once, as when its machine dies: frozen
    first (SIGSTOP), then killed, so that no part reacts to another's death (an nginx master
    starting a new worker, an API process told of its parent's death draining and withdrawing
    from the media node registry: a stop, not a death). How many processes were killed."""
    doomed, queue = [root], [root]
    while queue:
        children = subprocess.run(["pgrep", "-P", str(queue.pop())], capture_output=True,
                                  text=True)
        for child in map(int, children.stdout.split()):
            if child not in doomed:
                doomed.append(child)
                queue.append(child)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return len(doomed)


class RtmpBalancer:
    """nginx's stream (TCP) proxy over the media nodes' RTMP ports, as a cloud TCP load
    balancer: round robin, a node that refuses the connection skipped for 10 s."""

    def __init__(self, work: Path, ports: list[int]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n"
                          for port in ports)
        self.work = work
        self.conf = work / "balancer.conf"
        self.conf.write_text(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
            f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
            "events { worker_connections 256; }\n"
            "stream {\n    upstream rtmp {\n" + servers + "    }\n"
            f"    server {{\n        listen 127.0.0.1:{BALANCER_PORT};\n"
            "        proxy_connect_timeout 1s;\n        proxy_pass rtmp;\n    }\n}\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RtmpBalancer:
        self.process = subprocess.Popen(
            [shutil.which("nginx") or "nginx", "-p", str(self.work), "-c", str(self.conf),
             "-e", str(self.work / "error.log"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        # Not by connecting: a connection would reach for the media nodes, and one not up yet
        # would be marked failed for fail_timeout.
        time.sleep(0.3)
        if self.process.poll() is not None:
            raise RuntimeError(f"the RTMP balancer did not start: {self.work / 'error.log'}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT, timeout=10)


class Stack:
    """Own PostgreSQL cluster and Redis Sentinel group, the edge, API nodes A and B, media
    nodes M1 and M2 behind the RTMP balancer, and the publisher."""

    def __init__(self, work: Path) -> None:
        self.work = work
        var = work / "var"
        ensure_secrets(var)
        self.redis = SentinelGroup(work / "redis")
        # The stack's mail (account verification) goes to a sink of its own, not to whatever
        # listens on the default SF_SMTP_URL (make run's catcher).
        self.mail = MailReceiver()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
        origins = [f"127.0.0.1:{ports['SF_MEDIA_HTTP_PORT']}" for ports in MEDIA_PORTS.values()]
        self.env = {
            **inherited,
            "SF_VAR_DIR": str(var), "SF_MEDIA_DIR": str(work / "media"),
            "SF_DATABASE_URL": f"postgresql://sf@127.0.0.1:{PG_PORT}/{DATABASE}",
            "SF_REDIS_URL": self.redis.url(0), "SF_SMTP_URL": self.mail.url,
            "SF_HTTP_PORT": str(HTTP_PORT), "SF_RTMP_PORT": str(BALANCER_PORT),
            "SF_MEDIA_CONTROL_PORT": str(CONTROL_PORT), "SF_API_PROCESSES": "1",
            # The edge balances over both API nodes and asks both media nodes' origins.
            "SF_EDGE_API_SERVERS": ",".join(f"127.0.0.1:{api}" for api, _ in NODE_PORTS.values()),
            "SF_EDGE_MEDIA_ORIGINS": ",".join(origins),
            "SF_RATE_LIMIT_ANONYMOUS": "100000000", "SF_RATE_LIMIT_USER": "100000000",
            "SF_RATE_LIMIT_AUTHENTICATED_IP": "100000000", "SF_RATE_LIMIT_AUTH_NETWORK": "100000000",
            "SF_RATE_LIMIT_AUTH_NODE": "100000000", "SF_ACCOUNTS_PER_RANGE_PER_DAY": "100000000",
            "SF_RATE_LIMIT_AUTH_IP": "100000000", "SF_RATE_LIMIT_AUTH_ACCOUNT": "100000000",
            "SF_BCRYPT_ROUNDS": "4", "SF_ACCESS_TOKEN_TTL": "7200",
            "SF_TRANSCODE_PRESET": "ultrafast", "SF_LOG_LEVEL": "INFO", "SF_ENV": "production",
        }
        self.config = load_config(self.node_env("A"))
        self.postgres = LocalPostgres(self.config)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}   # API nodes and media nodes
        self.edge: nginx.Edge | None = None
        self.balancer = RtmpBalancer(work / "balancer", [int(ports["SF_RTMP_PORT"])
                                                         for ports in MEDIA_PORTS.values()])
        self.publisher: subprocess.Popen[bytes] | None = None
        self.stream_key = ""

    def node_env(self, name: str) -> dict[str, str]:
        if name in MEDIA_PORTS:  # a machine of its own: its own var and media dirs
            var = self.work / name / "var"
            if not (var / "secrets").is_dir():
                copy_secrets(self.work / "var", var)
            return {**self.env, **MEDIA_PORTS[name], "SF_VAR_DIR": str(var),
                    "SF_MEDIA_DIR": str(self.work / name / "media"), "SF_NODE_ID": f"chaos-{name}"}
        api_port, internal_port = NODE_PORTS[name]
        return {**self.env, "SF_API_PORT": str(api_port),
                "SF_API_INTERNAL_PORT": str(internal_port), "SF_NODE_ID": f"chaos-{name}"}

    def start(self) -> None:
        ports = [HTTP_PORT, CONTROL_PORT, BALANCER_PORT, PG_PORT,
                 *(p for pair in NODE_PORTS.values() for p in pair),
                 *(int(p) for ports in MEDIA_PORTS.values() for p in ports.values())]
        busy = [port for port in ports if port_open(port)]
        if busy:
            raise RuntimeError(f"ports already in use: {busy} (another chaos run?)")
        self.mail.start()
        log(f"PostgreSQL cluster in {self.postgres.data_dir}")
        self.postgres.start()
        log("Redis Sentinel group: primary, replica, three sentinels")
        self.redis.start()
        migrated = subprocess.run([sys.executable, "-m", "sf.app", "migrate"],
                                  env=self.node_env("A"), cwd=ROOT, capture_output=True, text=True)
        if migrated.returncode != 0:
            raise RuntimeError(f"sf migrate failed: {migrated.stderr[-2000:]}")
        self.edge = nginx.Edge(self.config).start()
        for name in (*NODE_PORTS, *MEDIA_PORTS):
            self.start_node(name)
        for name in (*NODE_PORTS, *MEDIA_PORTS):
            if poll(functools.partial(self.node_ready, name), 60, 0.2) is None:
                raise RuntimeError(f"node {name} did not become ready: {self.log_tail(name)}")
        self.balancer.start()

    def start_node(self, name: str) -> None:
        command = ["node", "--no-edge"] if name in MEDIA_PORTS else ["serve"]
        output = open(self.work / f"node-{name}.log", "ab")  # noqa: SIM115 (the child holds it)
        try:
            self.nodes[name] = subprocess.Popen(
                [sys.executable, "-m", "sf.app", *command], env=self.node_env(name), cwd=ROOT,
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

    def kill_node(self, name: str) -> int:
        """SIGKILL a node and everything it started (nginx, API processes, FFmpeg) at once;
        how many processes died."""
        process = self.nodes[name]
        killed = kill_tree(process.pid)
        process.wait()
        return killed

    def node_url(self, name: str) -> str:
        ports = MEDIA_PORTS.get(name)
        return f"http://127.0.0.1:{ports['SF_API_PORT'] if ports else NODE_PORTS[name][0]}"

    def rtmp_port(self, name: str) -> int:
        return int(MEDIA_PORTS[name]["SF_RTMP_PORT"])

    def node_ready(self, name: str) -> bool:
        process = self.nodes[name]
        if process.poll() is not None:
            raise RuntimeError(f"node {name} exited ({process.returncode}): "
                               f"{self.log_tail(name)}")
        if name in MEDIA_PORTS and not port_open(self.rtmp_port(name)):
            return False
        return http(self.node_url(name) + "/readyz", timeout=2)[0] == 200

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            text = (self.work / f"node-{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def publish(self, seconds: float) -> None:
        """The streamer's encoder: testsrc2 + a tone as H.264/AAC over RTMP, in real time,
        through the balancer (the ingest URL streamers are given)."""
        self.publisher = push_rtmp(f"rtmp://127.0.0.1:{BALANCER_PORT}/live/{self.stream_key}",
                                   size="640x360", rate=20, seconds=int(seconds),
                                   audio_bitrate="64k", preexec_fn=die_with_parent)

    def transcoder_pids(self, stream_id: int, node: str | None = None) -> list[int]:
        """The FFmpeg processes pulling the stream on a media node, or on any (not the
        publisher, which pushes)."""
        pids = []
        for name in [node] if node else MEDIA_PORTS:
            result = subprocess.run(["pgrep", "-f", "--", f"-i rtmp://127.0.0.1:"
                                     f"{self.rtmp_port(name)}/live/{stream_id}( |$)"],
                                    capture_output=True, text=True)
            pids += [int(pid) for pid in result.stdout.split()]
        return pids

    def holder(self, stream_id: int) -> str | None:
        """The media node transcoding the stream."""
        return next((name for name in MEDIA_PORTS if self.transcoder_pids(stream_id, name)), None)

    def stop(self) -> None:
        if self.publisher and self.publisher.poll() is None:
            self.publisher.kill()
            self.publisher.wait()
        for name in list(self.nodes):
            self.stop_node(name)
        self.balancer.stop()
        if self.edge is not None:
            self.edge.stop()
        self.redis.stop()
        self.postgres.stop()
        self.mail.close()

    def node_warnings(self) -> Counter[str]:
        """WARNING/ERROR lines of every node's log, by message."""
        found: Counter[str] = Counter()
        for name in (*NODE_PORTS, *MEDIA_PORTS):
            try:
                lines = (self.work / f"node-{name}.log").read_text(errors="replace").splitlines()
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
