"""The platform bench/hls.py measures, and what it reads from outside: `sf dev` as a child with
a var dir of its own, a publisher, the origin's playlist writes on disk, CPU from /proc, the
origin's access log, and h2load for the capacity run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hlsplayers import parse_media  # noqa: E402
from harness.client import http, push_rtmp, register, stream_key  # noqa: E402
from harness.measure import CLOCK_TICKS, log, percentile, process_stat  # noqa: E402
from harness.ports import reserve_ports  # noqa: E402
from sf.config import bootstrap_var_dir, load_config, with_url_path  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402

DATABASE, REDIS_DB = "sf_hlsbench", "8"
H2LOAD_MISSING = "h2load not found: apt-get install nghttp2-client (Debian's h2load)"


def wait(check: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def without_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = (f"{parts.username}@" if parts.username else "") + f"{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Stack:
    """`sf dev` (what `make run` runs) on ports port_base.. with its own var dir, database
    `sf_hlsbench` and Redis db 8 on the project's running PostgreSQL and Redis."""

    def __init__(self, port_base: int | None = None) -> None:
        if port_base is None:
            port_base = reserve_ports(9)[0]
        self.work = Path(tempfile.mkdtemp(prefix="sf-hlsbench-"))
        self.work.chmod(0o755)  # the postgres user must reach var/postgres (localservices)
        self.var = self.work / "var"
        self.hls_dir = self.work / "media" / "hls"
        project = load_config({**os.environ, "SF_VAR_DIR": str(bootstrap_var_dir())})
        self.project = project
        self.http_port, self.rtmp_port = port_base, port_base + 3
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SF_")},
            "SF_VAR_DIR": str(self.var), "SF_MEDIA_DIR": str(self.work / "media"),
            "SF_DATABASE_URL": without_password(with_url_path(project.database_url, DATABASE)),
            "SF_REDIS_URL": without_password(with_url_path(project.redis_url, REDIS_DB)),
            "SF_HTTP_PORT": str(port_base), "SF_API_PORT": str(port_base + 1),
            "SF_MEDIA_CONTROL_PORT": str(port_base + 2), "SF_RTMP_PORT": str(port_base + 3),
            "SF_API_INTERNAL_PORT": str(port_base + 4), "SF_MEDIA_HTTP_PORT": str(port_base + 8),
            "SF_RATE_LIMIT_AUTH_IP": "1000", "SF_LOG_LEVEL": "WARNING",
            # The bench's streamer registers and goes live at once: a new account would be
            # served source-only, and the bench measures the transcoded 480p rung.
            "SF_TRANSCODE_MIN_ACCOUNT_AGE_MINUTES": "0",
            # this checkout's code (.venv's `sf` is an editable install of another checkout)
            "PYTHONPATH": str(ROOT),
        }
        self.base_url = f"http://127.0.0.1:{port_base}"
        self.process: subprocess.Popen[bytes] | None = None
        self.publisher: subprocess.Popen[bytes] | None = None

    def start(self) -> Stack:
        import asyncio

        from sf.db.migrate import recreate_database
        (self.var / "secrets").mkdir(parents=True)
        for secret in self.project.secrets_dir.iterdir():
            shutil.copy(secret, self.var / "secrets" / secret.name)
        # `sf dev` starts PostgreSQL and Redis unless they already run from this var dir: its
        # services directories point at the project's, so it finds them running and reuses them.
        for name in ("postgres", "redis"):
            (self.var / name).symlink_to(self.project.var_dir.resolve() / name)
        asyncio.run(recreate_database(self.project.database_url, DATABASE, apply_migrations=False))
        self.dev_log = (self.work / "sf-dev.log").open("ab")
        self.process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "sf"), "dev"], env=self.env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=self.dev_log, stderr=self.dev_log,
            preexec_fn=die_with_parent)
        wait(lambda: self.process and (self.process.poll() is not None
                                       or http(self.base_url + "/readyz", timeout=2)[0] == 200),
             60, "sf dev to answer /readyz")
        if self.process.poll() is not None:
            raise SystemExit(f"sf dev exited: see {self.work / 'sf-dev.log'}")
        return self

    def publish(self) -> None:
        """Register a streamer and publish a 480p30 source with a 1 s GOP: a single 480p rung."""
        name = f"hls{int(time.time()) % 100000}"
        token = register(self.base_url, name, "bench-password-1")["access_token"]
        key = stream_key(self.base_url, token)
        self.publisher = push_rtmp(f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}",
                                   size="854x480", rate=30, gop=30, video_bitrate="800k",
                                   audio_bitrate="64k", stderr=self.dev_log,
                                   preexec_fn=die_with_parent)

    def stop(self, keep: bool) -> None:
        for process, signum in ((self.publisher, signal.SIGKILL), (self.process, signal.SIGINT)):
            if process is not None and process.poll() is None:
                process.send_signal(signum)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if keep:
            log(f"kept: {self.work} (sf-dev.log, var/log/)")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def live_stream(base_url: str) -> tuple[int, str] | None:
    """(id, playback path) of the first live stream that GET /api/streams lists."""
    status, body = http(base_url + "/api/streams")
    if status != 200:
        return None
    for stream in json.loads(body).get("data", []):
        if stream.get("is_live") and (stream.get("playback") or {}).get("hls"):
            path = stream["playback"]["hls"]
            return stream["id"], urlsplit(path).path if "://" in path else path
    return None


def media_playlist(base_url: str, path: str) -> tuple[int, float, list[tuple[float, bytes]]] | None:
    status, body = http(base_url + path, timeout=5)
    return parse_media(path, body.decode()) if status == 200 else None


class PlaylistWatcher(threading.Thread):
    """When the origin wrote each version of the media playlist: its mtime on disk, polled
    every 10 ms (FFmpeg writes a temp file and renames it), by the newest sequence it lists."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.written: dict[int, float] = {}
        self.stopping = False

    def run(self) -> None:
        mtime = 0
        while not self.stopping:
            try:
                stat = self.path.stat()
                if stat.st_mtime_ns != mtime:
                    mtime = stat.st_mtime_ns
                    sequence, _, segments = parse_media("/", self.path.read_text())
                    self.written.setdefault(sequence + len(segments) - 1, mtime / 1e9)
            except (OSError, ValueError):
                pass
            time.sleep(0.01)


# --- CPU from /proc -------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime ticks) of a process; None when it is gone."""
    try:
        return process_stat(pid)
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree_cpu(roots: list[int]) -> dict[int, tuple[str, int]]:
    """{pid: (label, cpu ticks)} of the processes under `roots` (them included)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    labels: dict[int, str] = {}

    def label(pid: int, parent: str) -> str:
        cmd = _cmdline(pid)
        if "nginx: worker" in cmd or "nginx: cache" in cmd:
            return parent.replace("master", "workers") if "master" in parent else parent
        if "nginx" in cmd.split(" ", 3)[0] or "nginx: master" in cmd:
            return ("edge" if "edge" in cmd else "media") + " nginx master"
        if "ffmpeg" in cmd.split(" ", 1)[0]:
            return "publisher ffmpeg" if "testsrc2" in cmd else "transcoder ffmpeg"
        if " sf dev" in cmd or cmd.endswith("sf dev "):
            return "sf dev + API processes"
        return "API processes" if "python" in cmd else cmd.split(" ", 1)[0] or "?"

    todo = [(root, "") for root in roots if root in stats]
    while todo:
        pid, parent = todo.pop()
        labels[pid] = label(pid, parent)
        todo += [(child, labels[pid]) for child in children.get(pid, [])]
    return {pid: (labels[pid], stats[pid][1]) for pid in labels}


def cpu_by_label(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]],
                 seconds: float) -> dict[str, float]:
    """% of one core per label between two tree_cpu snapshots."""
    used: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        spent = ticks - before[pid][1] if pid in before else ticks
        used[name] = used.get(name, 0.0) + spent / CLOCK_TICKS / seconds * 100
    return used


def hls_requests(access_log: Path, start: int) -> dict[str, int]:
    """/hls/ requests the origin logged past byte offset `start`, by kind."""
    counts = {"playlists": 0, "segments": 0, "segments 304": 0, "other": 0}
    try:
        with access_log.open("rb") as handle:
            handle.seek(start)
            for line in handle:
                if b" /hls/" not in line:
                    continue
                _, request, rest = line.split(b'"', 2)
                kind = "playlists" if b".m3u8" in request else "segments" if b".ts" in request else "other"
                counts[kind] += 1
                if kind == "segments" and rest.split(None, 1)[0] == b"304":
                    counts["segments 304"] += 1  # revalidated by the edge: no body
    except OSError:
        pass
    return counts


# --- capacity: h2load, open loop ---------------------------------------------------------------

H2LOAD_PER_CLIENT = 10.0  # requests/s per connection
H2LOAD_INSTANCES = 5      # h2load processes per kind, started 1/(5 x 10) s apart


def h2load_step(base_url: str, groups: dict[str, list[str]], rate: float, seconds: float,
                work: Path) -> dict[str, dict[str, Any]]:
    """h2load over HTTP/1.1 at `rate` requests/s for each group of paths; per group: achieved
    rate, errors and latency percentiles (from h2load's per-request log).

    h2load's --rps sends a request that falls due on a busy connection only after its answer
    (closed loop): so each connection is asked for few requests (10/s), over many connections.
    Its clients' timers all start together and fire in step, so the clients are split over 5
    h2load processes started 20 ms apart: bursts of a fifth every 20 ms, not all every 100 ms.
    """
    clients = max(1, round(rate / H2LOAD_PER_CLIENT / H2LOAD_INSTANCES))
    processes = []
    for instance in range(H2LOAD_INSTANCES):
        for name, paths in groups.items():
            stem = work / f"{name}-{instance}"
            processes.append(subprocess.Popen(
                ["h2load", "--h1", "-t", "1", "-c", str(clients),
                 "--rps", f"{rate / H2LOAD_INSTANCES / clients:.3f}", "-D", str(int(seconds)),
                 "-T", "10", "-N", "10", "--log-file", f"{stem}.log",
                 *[base_url + path for path in paths]],
                stdout=open(f"{stem}.out", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                stdin=subprocess.DEVNULL))
        time.sleep(1 / H2LOAD_PER_CLIENT / H2LOAD_INSTANCES)
    for process in processes:
        process.wait()
    return {name: h2load_result(work, name, int(seconds)) for name in groups}


def h2load_result(work: Path, name: str, seconds: float) -> dict[str, Any]:
    times, errors = [], 0
    for instance in range(H2LOAD_INSTANCES):
        for line in (work / f"{name}-{instance}.log").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                times.append(int(parts[2]) / 1e6)
                errors += parts[1] != "200"
        # "requests: 100 total, 100 started, 100 done, 95 succeeded, 5 failed, 5 errored, 0 timeout"
        for line in (work / f"{name}-{instance}.out").read_text(errors="replace").splitlines():
            if line.startswith("requests:"):
                fields = {f.split()[1]: int(f.split()[0]) for f in line[9:].split(",") if f.strip()}
                errors += fields.get("errored", 0) + fields.get("timeout", 0)
    return {"achieved": len(times) / seconds, "errors": errors, "p50": percentile(times, 50),
            "p99": percentile(times, 99), "max": max(times, default=float("nan"))}
