"""bench/viewers.py's server side: the stack under test (its own Redis server, one API node
pinned to SERVER_CPU behind nginx and the edge), /proc sampling of it, py-spy profiles."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from harness.client import Connection  # noqa: E402
from harness.measure import children_of, core_times, log, process_cpu, process_status  # noqa: E402
from harness.platform import node_ports, spawn_api  # noqa: E402
from harness.ports import reserve_port  # noqa: E402
from sf.config import ensure_secrets, load_config, with_url_path  # noqa: E402
from sf.db.migrate import recreate_database  # noqa: E402
from sf.media import nginx  # noqa: E402
from sf.media.process import die_with_parent  # noqa: E402
from sf.node import localservices  # noqa: E402
from sf.node.dev import start_mail_sink, stop_process  # noqa: E402

BENCH_DB = "sf_bench_viewers"
SERVER_CPU, CLIENT_CPU = 0, 1


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))



class Sampler(threading.Thread):
    """Samples the API node (RSS, CPU, fds) and the proxies' CPU every 0.5 s.

    With `processes` the node is a supervisor and its forked API processes (SF_API_PROCESSES
    > 1): their figures are summed (RSS and VmHWM too: what the node's processes hold together).
    """

    def __init__(self, api_pid: int, proxies: dict[str, int], processes: bool = False) -> None:
        super().__init__(daemon=True)
        self.api_pid, self.proxies = api_pid, proxies
        self.processes = processes
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def api_pids(self) -> list[int]:
        return [self.api_pid, *children_of(self.api_pid)] if self.processes else [self.api_pid]

    def sample(self) -> dict[str, Any]:
        if self.processes:
            return self.sample_processes()
        status = process_status(self.api_pid)
        proxies = {}
        for name, master in self.proxies.items():
            total = 0.0
            for pid in [master, *children_of(master)]:
                try:
                    total += process_cpu(pid)
                except OSError:
                    pass
            proxies[name] = total
        try:
            fds = len(os.listdir(f"/proc/{self.api_pid}/fd"))
        except OSError:
            fds = -1
        return {"t": time.time(), "cpu": process_cpu(self.api_pid), "rss": status["VmRSS"] * 1024,
                "hwm": status["VmHWM"] * 1024, "threads": status["Threads"], "fds": fds,
                "proxies": proxies, "cores": core_times()}

    def sample_processes(self) -> dict[str, Any]:
        cpu, rss, hwm, threads, fds = 0.0, 0, 0, 0, 0
        per_process = {}
        for pid in self.api_pids():
            try:
                status = process_status(pid)
                cpu += process_cpu(pid)
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue  # a process restarting: its figures are missing from this sample
            rss, hwm, threads = (rss + status["VmRSS"] * 1024, hwm + status["VmHWM"] * 1024,
                                 threads + status["Threads"])
            per_process[pid] = status["VmRSS"] * 1024
        proxies = {}
        for name, master in self.proxies.items():
            proxies[name] = 0.0
            for pid in [master, *children_of(master)]:
                try:
                    proxies[name] += process_cpu(pid)
                except OSError:
                    pass
        return {"t": time.time(), "cpu": cpu, "rss": rss, "hwm": hwm, "threads": threads,
                "fds": fds, "proxies": proxies, "cores": core_times(),
                "per_process_rss": per_process}

    def hwm(self) -> int:
        """The node's peak resident memory now (VmHWM, summed over its processes)."""
        total = 0
        for pid in self.api_pids():
            try:
                total += process_status(pid)["VmHWM"] * 1024
            except OSError:
                pass
        return total

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                self.samples.append(self.sample())
            except (OSError, KeyError):
                return

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        inside = [s for s in self.samples if start <= s["t"] <= end]
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        wall = last["t"] - first["t"]
        cores = {}
        for name in first["cores"]:
            busy = last["cores"][name][0] - first["cores"][name][0]
            total = last["cores"][name][1] - first["cores"][name][1]
            cores[name] = busy / total if total else math.nan
        return {"cpu": (last["cpu"] - first["cpu"]) / wall,
                "rss_max": max(s["rss"] for s in inside), "rss_end": last["rss"],
                "fds": last["fds"], "threads": last["threads"],
                "proxies": {n: (last["proxies"][n] - first["proxies"][n]) / wall
                            for n in first["proxies"]}, "cores": cores}


# --- the stack ------------------------------------------------------------------------------------

class Stack:
    """PostgreSQL database, Redis server, the node's nginx and the edge, one API node: one
    process pinned to CPU 0, or `processes` of them on any core; `settings` (SF_* names) over
    the bench's own."""

    def __init__(self, via: str, *, database: str = BENCH_DB, processes: int = 1,
                 settings: dict[str, str] | None = None, prefix: str = "sf-bench-viewers-") -> None:
        self.via = via
        self.database, self.processes, self.settings = database, processes, settings or {}
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.front: nginx.Front | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.redis_process: subprocess.Popen[bytes] | None = None
        self.api_log = self.work / "api.log"
        self.ports = node_ports()
        self.http_port = int(self.ports["SF_HTTP_PORT"])
        self.api_port = int(self.ports["SF_API_PORT"])
        self.redis_port = reserve_port()
        self.mail_port = reserve_port()
        self.mail_sink: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = load_config()
        localservices.start_all(base)
        var = self.work / "var"
        ensure_secrets(var)  # fresh secrets for this node; the database URL carries its password
        # A Redis server of its own, not a db number on the shared one: Redis pub/sub ignores db
        # numbers, and the stream events of every other node on this machine (a dev node, test
        # suites) would reach this node's viewers ("stream" messages, 4404 closes).
        self.redis_process = self.start_redis((var / "secrets" / "redis_password").read_text()
                                              .strip())
        self.env = {
            **os.environ,
            "SF_VAR_DIR": str(var), "SF_MEDIA_DIR": str(self.work / "media"),
            "SF_DATABASE_URL": with_url_path(base.database_url, self.database),
            "SF_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            **self.ports, "SF_API_PROCESSES": str(self.processes),  # one: pinned to CPU 0
            "SF_RATE_LIMIT_ANONYMOUS": "100000000", "SF_RATE_LIMIT_USER": "100000000",
            "SF_RATE_LIMIT_AUTHENTICATED_IP": "100000000", "SF_RATE_LIMIT_AUTH_NETWORK": "100000000",
            "SF_RATE_LIMIT_AUTH_NODE": "100000000", "SF_ACCOUNTS_PER_RANGE_PER_DAY": "100000000",
            "SF_RATE_LIMIT_AUTH_IP": "100000000", "SF_RATE_LIMIT_AUTH_ACCOUNT": "100000000",
            # Sign-up mails go to a sink of the stack's own (var/mail), not to a port nobody
            # serves (a warning and a retry per account, in the middle of the figures).
            "SF_SMTP_URL": f"smtp://127.0.0.1:{self.mail_port}",
            "SF_BCRYPT_ROUNDS": "4", "SF_LOG_LEVEL": "WARNING", "SF_ENV": "production",
        }
        # The server's own defaults apply: the viewers come from addresses of their own, four
        # per /24, as the per-network cap and the per-address handshake limit expect.
        for name in ("SF_WS_CONNECTIONS_PER_ADDRESS", "SF_VIEWERS_ANONYMOUS_PER_NETWORK",
                     "SF_WS_HANDSHAKES_PER_MINUTE"):
            self.env.pop(name, None)
        self.env.update(self.settings)
        asyncio.run(recreate_database(base.database_url, self.database))
        self.config = load_config(self.env)
        self.mail_sink = start_mail_sink(self.config, quiet=True)
        self.front = nginx.Front(self.config).start()
        self.server = spawn_api(self.env, self.api_log, preexec_fn=pinned(SERVER_CPU)
                                if self.processes == 1 else die_with_parent)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the API node exited: {self.log_tail()}")
            try:
                if self.call("GET", "/readyz", port=self.http_port)[0] == 200:
                    return
            except (OSError, ValueError, asyncio.IncompleteReadError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API node did not become ready: {self.log_tail()}")

    def start_redis(self, password: str) -> subprocess.Popen[bytes]:
        directory = self.work / "redis"
        directory.mkdir()
        process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory),
             "--requirepass", password, "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with redis.Redis(port=self.redis_port, password=password, socket_timeout=1) as client:
                    if client.ping():
                        return process
            except redis.RedisError:
                time.sleep(0.1)
        process.kill()
        raise RuntimeError("the bench's redis-server did not start")

    @property
    def entry_port(self) -> int:
        """Where REST goes: the public port (the edge)."""
        return self.http_port

    @property
    def origin(self) -> str:
        """The platform's public origin (what a browser on the watch page sends)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_port(self) -> int:
        return self.http_port if self.via == "edge" else self.api_port

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             port: int | None = None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            connection = Connection("127.0.0.1", port or self.entry_port)
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = json.dumps(body).encode() if body is not None else b""
            try:
                status, raw = await asyncio.wait_for(
                    connection.request(method, path, headers, data), 30)
            finally:
                if connection.writer is not None:
                    connection.writer.close()
            return status, json.loads(raw) if raw else None
        return asyncio.run(go())

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.api_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def server_warnings(self) -> Counter[str]:
        found: Counter[str] = Counter()
        try:
            for line in self.api_log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    message = str(record.get("message", line)).replace("\n", " ")[:100]
                    found[f"{record.get('level', '?')}: {message}"] += 1
                except ValueError:
                    found[line[:100]] += 1
        except OSError:
            pass
        return found

    def stop(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.front is not None:
            self.front.stop()
        if self.mail_sink is not None:
            stop_process(self.mail_sink)
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            try:
                self.redis_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis_process.kill()
                self.redis_process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def run_one_bench(title: str, timeout: float, execute: Any) -> int:
    """What a one-run benchmark's main does around its run: the generator pinned to the client
    core with the open-file limit raised, SIGTERM as an interrupt (every process the run
    started is stopped on the way out), a header naming the machine, its load and the server
    code's commit, and the run under `timeout`; the exit status from its figures' "ok"."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    raise_nofile()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def too_long(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run took longer than --timeout {timeout:.0f} s")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGALRM, too_long)
    load = os.getloadavg()
    try:  # read-only: which server code was measured
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    print(f"# {title}: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} at start; open-file limit "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]} per process; server code commit "
          f"{commit or '?'}")
    sys.stdout.flush()
    signal.alarm(int(timeout))
    try:
        figures = execute()
    finally:
        signal.alarm(0)
    return 0 if figures["ok"] else 1


def bench_entry(main: Any) -> None:
    """`if __name__ == "__main__"` of a benchmark: its exit status, 130 when interrupted."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process this bench started has been stopped", file=sys.stderr)
        sys.exit(130)


def pinned(cpu: int) -> Any:
    def setup() -> None:
        die_with_parent()
        os.sched_setaffinity(0, {cpu})
    return setup


PROFILE_SKIP = {"<module>", "main", "cmd_serve", "run_serve", "run", "Runner.run",
                "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever",
                "BaseEventLoop._run_once", "Handle._run"}


class Profiler:
    """py-spy (from .venv, if installed) on the API node, one recording per phase."""

    def __init__(self, stack: Stack, enabled: bool) -> None:
        self.stack = stack
        self.binary = ROOT / ".venv" / "bin" / "py-spy"
        self.enabled = enabled and self.binary.exists()
        if enabled and not self.enabled:
            log("--profile: no py-spy in .venv (.venv/bin/pip install py-spy)")
        self.current: tuple[str, subprocess.Popen[bytes]] | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def start(self, phase: str) -> None:
        self.stop()
        if not self.enabled:
            return
        assert self.stack.server is not None
        process = subprocess.Popen(
            [str(self.binary), "record", "--pid", str(self.stack.server.pid), "--duration",
             "3600", "--rate", "100", "--nonblocking", "--idle", "--format", "raw",
             "--output", str(self.stack.work / f"profile-{phase}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(CLIENT_CPU))
        self.current = (phase, process)

    def stop(self) -> None:
        if self.current is None:
            return
        phase, process = self.current
        self.current = None
        process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        summary = self.summarize(self.stack.work / f"profile-{phase}.txt")
        if summary:
            self.results[phase] = summary

    @staticmethod
    def summarize(path: Path) -> dict[str, Any] | None:
        """Inclusive share of the event loop thread's samples per function (idle included)."""
        if not path.exists():
            return None
        counts: Counter[str] = Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack_text, _, number = line.rpartition(" ")
            if not number.isdigit():
                continue
            frames = stack_text.split(";")
            if frames[0].startswith("Thread._bootstrap"):
                continue  # pykka actors and executor threads: mostly waiting on their queues
            weight = int(number)
            seen = set()
            for frame in frames:
                if frame.split(" (")[0] in PROFILE_SKIP:
                    continue
                match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
                name = (f"{match.group(1)} ({'/'.join(Path(match.group(2)).parts[-2:])})"
                        if match else frame)
                if name not in seen:
                    seen.add(name)
                    counts[name] += weight
            total += weight
        if not total:
            return None
        return {"samples": total, "top": [(name, count / total)
                                          for name, count in counts.most_common(14)]}
