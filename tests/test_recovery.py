"""Stopping, restarting and losing dependencies without failing clients (issue 11).

- SIGTERM: a node stops accepting, finishes what it has started, and only then stops.
- A rolling restart of two API nodes behind nginx fails no request.
- PostgreSQL restarted under a running API: it serves again without a restart of its own.
Everything runs for real: nginx, `sf serve` processes, a PostgreSQL cluster of the test's own.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from harness.platform import Platform, redis_up, wait_for
from harness.ports import reserve_port, reserve_ports
from sf.config import with_url_path
from sf.node.localservices import LocalPostgres

pytestmark = pytest.mark.platform


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in
               (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_stopping_node_refuses_new_connections_but_finishes_the_request_it_is_reading(
        base_config, tmp_path):
    node = Platform(base_config, tmp_path).start()
    try:
        node.register("drainer")
        body = json.dumps({"username": "drainer", "password": "password123"}).encode()
        sock = socket.create_connection(("127.0.0.1", node.config.api_port), timeout=20)
        sock.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: api\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:7])
        time.sleep(0.5)  # headers read, body still arriving
        node.api_process.send_signal(signal.SIGTERM)
        # The node lets go of its port at once: a new connection is refused (a proxy would
        # go to another node), while the request it already has goes on.
        wait_for(lambda: _refused(node.config.api_port), 5, what="new connections refused")
        time.sleep(1.5)  # longer than the quiet period: only the request keeps it draining
        sock.sendall(body[7:])
        status, headers, answer = read_response(sock)
        assert status == 200, answer
        assert json.loads(answer)["access_token"]
        assert headers["connection"] == "close"  # draining: keep-alive is not offered
        sock.close()
        assert node.api_process.wait(timeout=20) == 0
        log = node.api_log.read_text()
        assert "draining" in log
    finally:
        node.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class SteadyClient(threading.Thread):
    """Requests through nginx without pause, reads and writes, on keep-alive connections;
    every answer that is not the expected one is a failure."""

    def __init__(self, node: Platform, token: str) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.token = token
        self.running = True
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        port = int(self.node.base_url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while self.running:
            n += 1
            auth = {"Authorization": f"Bearer {self.token}"}
            requests = [
                ("GET", "/api/streams", None, {}, 200),
                ("GET", "/api/users/profile", None, auth, 200),
                ("PUT", "/api/users/profile", json.dumps({"bio": f"round {n}"}),
                 {**auth, "Content-Type": "application/json"}, 200),
            ]
            method, path, body, headers, expected = requests[n % len(requests)]
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                outcome = str(response.status)
                if response.status != expected:
                    self.failures.append(f"{method} {path}: {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                self.failures.append(f"{method} {path}: {exc!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            self.outcomes[outcome] += 1
        connection.close()


FAIL_TIMEOUT = 2


def test_a_rolling_restart_of_two_api_nodes_fails_no_request(base_config, tmp_path):
    api_port, other_port = reserve_ports(2)
    node = Platform(base_config, tmp_path, SF_API_PROCESSES="1", SF_API_PORT=str(api_port),
                    SF_RATE_LIMIT_USER="1000000", SF_RATE_LIMIT_ANONYMOUS="1000000",
                    SF_EDGE_API_SERVERS=f"127.0.0.1:{api_port},127.0.0.1:{other_port}").start()
    other = node.start_api_node(tmp_path / "other-media", port=other_port)
    try:
        # The edge balances over both API nodes; a request that meets a refused connection goes
        # to the other one. The operator restarts the next node once the previous one is ready
        # (and waits FAIL_TIMEOUT s more, as with a balancer that marks servers down).
        assert other["url"].endswith(f":{other_port}")
        edge_conf = (Path(node.config.var_dir) / "edge" / "nginx.conf").read_text()
        assert f"127.0.0.1:{other_port} max_fails=0" in edge_conf
        token = node.register("roller")["token"]
        client = SteadyClient(node, token)
        client.start()
        time.sleep(2)
        served_before = sum(client.outcomes.values())

        # Restart the platform's own node, then the other one, each time waiting until the
        # restarted node is ready before touching the next.
        node.api_process.send_signal(signal.SIGTERM)
        assert node.api_process.wait(timeout=30) == 0
        node.start_api()
        wait_for(lambda: node._node_ready({"url": f"http://127.0.0.1:{node.config.api_port}"}),
                 30, what="node back")
        time.sleep(FAIL_TIMEOUT + 1)
        other["process"].send_signal(signal.SIGTERM)
        assert other["process"].wait(timeout=30) == 0
        restarted = node.start_api_node(tmp_path / "other-media", port=other_port)
        other["process"], other["log"] = restarted["process"], restarted["log"]
        time.sleep(3)
        client.running = False
        client.join(timeout=15)
        total = sum(client.outcomes.values())
        print(f"rolling restart: {total} requests, outcomes {dict(client.outcomes)}")
        assert client.failures == []
        assert total > served_before + 50  # it really kept sending through both restarts
    finally:
        node.stop_api_node(other)
        node.stop()


@pytest.fixture
def own_postgres(base_config, tmp_path):
    """A PostgreSQL cluster of this test's own (restarting the shared one would hurt others)."""
    var = tmp_path / "pgvar"
    (var / "secrets").mkdir(parents=True)
    shutil.copy(base_config.secrets_dir / "postgres_password", var / "secrets")
    parts = urlsplit(with_url_path(base_config.database_url, "sf_recovery"))
    url = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}",
                                                                      f":{reserve_port()}")))
    config = base_config.replace(var_dir=var, database_url=url)
    postgres = LocalPostgres(config)
    postgres.start()
    yield postgres, url
    postgres.stop()
    shutil.rmtree(postgres.data_dir.parent, ignore_errors=True)


def test_the_api_serves_again_after_postgresql_restarts_without_restarting(
        base_config, tmp_path, own_postgres):
    postgres, url = own_postgres
    node = Platform(base_config, tmp_path, SF_DATABASE_URL=url, SF_API_PROCESSES="1",
                    SF_RATE_LIMIT_ANONYMOUS="1000000", SF_RATE_LIMIT_USER="1000000")
    subprocess.run([sys.executable, "-m", "sf.app", "migrate"], env=node.env, check=True,
                   capture_output=True)
    node.start()
    try:
        user = node.register("survivor")
        pid = node.api_process.pid
        postgres.stop()
        status, body, _ = node.request("GET", "/api/users/survivor")
        assert status == 503 and body["error"]["code"] == "internal_error", body
        status, _, _ = node.request("GET", "/readyz")
        assert status == 503
        postgres.start()
        started = time.monotonic()
        wait_for(lambda: node.request("GET", "/api/users/survivor")[0] == 200, 20, 0.1,
                 "reads to be served again")
        recovered = time.monotonic() - started
        status, _, _ = node.request("PUT", "/api/users/profile", {"bio": "still here"},
                                    token=user["token"])
        assert status == 200
        assert node.request("GET", "/readyz")[0] == 200
        assert node.api_process.pid == pid and node.api_process.poll() is None
        print(f"PostgreSQL restart: API serving again {recovered:.2f} s after it was back")
        assert recovered < 10
    finally:
        node.stop()


def test_no_request_fails_once_redis_is_back(base_config, tmp_path):
    """After a Redis restart the client pool still holds connections to the dead server; each
    is retried on a fresh connection instead of failing the request that meets it."""
    port = reserve_port()
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
               "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
               "--dir", str(tmp_path)]

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_up(port), 10, what="redis-server")
        return process

    server = start_redis()
    node = Platform(base_config, tmp_path / "node", SF_API_PROCESSES="1",
                    SF_REDIS_URL=f"redis://127.0.0.1:{port}/0").start()
    try:
        token = node.register("steadfast")["token"]
        # Fill the pool: several requests at once each take a connection.
        threads = [threading.Thread(target=node.request, args=("GET", "/api/users/profile"),
                                    kwargs={"token": token}) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server.kill()
        server.wait()
        server = start_redis()  # the session survives: append-only file, fsync always
        statuses = Counter(node.request("GET", "/api/users/profile", token=token)[0]
                           for _ in range(30))
        assert statuses == Counter({200: 30})
    finally:
        node.stop()
        server.kill()
        server.wait()



def test_a_trickling_client_keeps_no_nginx_worker_alive_and_tickets_stay_out_of_its_log(
        base_config, tmp_path):
    """security.md#trickling-body and security.md#secrets-in-nginx-logs: a client sending a body a
    byte every few seconds kept an nginx
    worker running after the node stopped; and while the API was restarting, nginx's error log
    recorded WebSocket requests with their tickets."""
    node = Platform(base_config, tmp_path, SF_API_PROCESSES="1").start()
    try:
        token = node.register("trickler")["token"]
        _, body, _ = node.request("POST", "/api/ws/ticket", token=token)
        ticket = body["ticket"]
        node.api_process.send_signal(signal.SIGTERM)
        node.api_process.wait(timeout=30)
        status, _, _ = node.request("GET", f"/ws/streams/1/viewers?ticket={ticket}",
                                    headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                             "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert status == 502  # the API is down: nginx could not connect
        log_dir = Path(node.config.var_dir) / "log"
        errors = "".join(path.read_text() for path in log_dir.glob("*-error.log"))
        assert ticket not in errors

        assert node.front is not None
        workers = [int(pid) for master in node.front.processes for pid in subprocess.run(
            ["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()]
        assert workers
        port = int(node.base_url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 60000\r\n\r\n{")
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(3):
                try:
                    slow.sendall(b" ")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)
        started = time.monotonic()
        node.stop()
        wait_for(lambda: not any(_alive(pid) for pid in workers), 15,
                 what="nginx's workers to exit")
        assert time.monotonic() - started < 12
        stop.set()
        slow.close()
    finally:
        node.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
