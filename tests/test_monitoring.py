"""Monitoring for real: the alert rules through promtool, a real Prometheus scraping a real
node (nginx-rtmp + two API processes) and seeing an alert fire and resolve, the ERROR-event
webhook against a real HTTP receiver, and the node's JSON log lines (ids in, secrets out)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
import yaml

from harness import client
from harness.platform import Platform, terminate, wait_for
from harness.ports import reserve_port
from sf.alerts import ALERT_LOGGER, AlertWebhook
from sf.config import PROJECT_ROOT
from sf.media.rtmp_stat import parse_stat

PROMETHEUS_DIR = PROJECT_ROOT / "conf" / "prometheus"
PROMETHEUS_PORT = reserve_port()
ALERTMANAGER_PORT = reserve_port()


# --- a real HTTP receiver for the webhook ------------------------------------------------------

class Receiver:
    """An HTTP server that records every POSTed JSON body (optionally answering slowly)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.bodies: list[Any] = []
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                time.sleep(receiver.delay)
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v2/alerts"
        # Polled every 50 ms, not 500: `close` waits for the loop to see the shutdown.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [alert for body in list(self.bodies) for alert in body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- promtool ------------------------------------------------------------------------------------

def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=PROJECT_ROOT)


def test_rules_and_scrape_config_pass_promtool_checks_and_unit_tests():
    rules = sorted(str(path) for path in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    tests = sorted(str(path) for path in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert rules and tests
    checked = promtool("check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    unit = promtool("test", "rules", *tests)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout
    # Every alert of the issue has a rule, and every rule has a unit test.
    names = {rule["alert"] for path in rules
             for group in yaml.safe_load(Path(path).read_text())["groups"]
             for rule in group["rules"]}
    assert {"SFApiDown", "SFApiLatencyHigh", "SFApiErrorRate", "SFTranscoderCrashLoop",
            "SFTranscoderDegraded", "SFTranscodingBelowRealTime", "SFMediaDiskFilling",
            "SFRedisUnreachable", "SFPostgresUnreachable", "SFBackupTooOld"} <= names
    tested = {case["alertname"] for path in tests
              for test in yaml.safe_load(Path(path).read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert names <= tested, names - tested


# --- the ERROR-event webhook, in this process against a real receiver ------------------------

def test_webhook_posts_alertmanager_json_deduplicated_rate_limited_and_redacted():
    receiver = Receiver()
    logger = logging.getLogger("sf.test.webhook")
    handler = AlertWebhook(receiver.url, node="test-node", dedup_seconds=300, max_per_minute=3)
    logger.addHandler(handler)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    key = "live_42_" + "k" * 40
    try:
        logger.info("not an error: never sent")
        logger.warning("nor a warning")
        for attempt in range(5):  # the same event, five times: one alert
            logger.error("database write failed for stream %s", attempt,
                         extra={"stream_id": 7, "request_id": "abc123def456"})
        logger.error("leaked %s and %s and token=%s", jwt, key, "hunter2secret")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("third distinct event")
        logger.error("fourth distinct event: over the 3-a-minute budget")
        wait_for(lambda: len(receiver.alerts) >= 3, 10, what="three alerts")
    finally:
        logger.removeHandler(handler)
        handler.close()  # delivers whatever is still queued: nothing more can arrive after it
        receiver.close()
    alerts = receiver.alerts
    assert len(alerts) == 3, alerts
    first = alerts[0]
    assert first["labels"] == {"alertname": "SFErrorLogged", "severity": "error", "service": "sf",
                               "node": "test-node", "logger": "sf.test.webhook",
                               "event": "database write failed for stream %s"}
    assert first["annotations"] == {"summary": "database write failed for stream 0",
                                    "stream_id": "7", "request_id": "abc123def456"}
    assert datetime.fromisoformat(first["endsAt"]) > datetime.fromisoformat(first["startsAt"])
    text = json.dumps(alerts)
    assert jwt not in text and key not in text and "hunter2secret" not in text
    assert "[JWT REDACTED]" in text and "token=[REDACTED]" in text
    assert alerts[2]["annotations"]["exception"] == "ValueError"
    assert "fourth" not in text


def test_webhook_never_blocks_the_caller_and_never_logs_its_url(captured_logs):
    slow = Receiver(delay=0.5)  # 2.5 times what the caller may take: it would wait for it
    logger = logging.getLogger("sf.test.webhook.slow")
    handler = AlertWebhook(slow.url + "?token=webhook-url-secret", node="n", dedup_seconds=0,
                           max_per_minute=100)
    logger.addHandler(handler)
    try:
        started = time.perf_counter()
        for index in range(20):
            logger.error("event %s", index)
        assert time.perf_counter() - started < 0.2  # queued, not posted, by the caller
        wait_for(lambda: slow.alerts, 10, what="the slow receiver's first batch")
    finally:
        logger.removeHandler(handler)
        handler.close()
        slow.close()
    # An unreachable webhook is logged (once, by the sf.alerts logger), never with its URL.
    dead = AlertWebhook("http://127.0.0.1:9/hook?token=webhook-url-secret", node="n",
                        dedup_seconds=0, max_per_minute=100, timeout=1)
    logger.addHandler(dead)
    try:
        logger.error("goes nowhere")
        logger.error("goes nowhere either")
        wait_for(lambda: "The alert webhook unreachable" in captured_logs.read_text(), 10,
                 what="the outage line")
    finally:
        logger.removeHandler(dead)
        dead.close()
    text = captured_logs.read_text()
    assert text.count("The alert webhook unreachable") == 1
    assert "webhook-url-secret" not in text
    assert ALERT_LOGGER == "sf.alerts"


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_real_alertmanager_takes_the_webhooks_alerts(tmp_path):
    """The JSON is Alertmanager's own: its /api/v2/alerts accepts and lists the alert."""
    assert shutil.which("prometheus-alertmanager"), "scripts/bootstrap installs it"
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: nobody}\nreceivers: [{name: nobody}]\n")
    base = f"http://127.0.0.1:{ALERTMANAGER_PORT}"
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
         f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}",
         "--cluster.listen-address=", "--log.level=warn"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    logger = logging.getLogger("sf.test.alertmanager")
    handler = AlertWebhook(f"{base}/api/v2/alerts", node="node-a", dedup_seconds=300,
                           max_per_minute=10)

    def listed() -> list[dict[str, Any]]:
        assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
        try:
            with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=2) as response:
                return [alert for alert in json.loads(response.read())
                        if alert["labels"].get("logger") == "sf.test.alertmanager"]
        except OSError:
            return []

    try:
        wait_for(lambda: listed() is not None and ready(f"{base}/-/ready"), 30,
                 what="Alertmanager to be ready")
        logger.addHandler(handler)
        logger.error("stream %s: transcoder degraded", 12, extra={"stream_id": 12})
        alerts = wait_for(listed, 15, what="Alertmanager to list the alert")
    finally:
        logger.removeHandler(handler)
        handler.close()
        process.terminate()
        process.wait(timeout=20)
        log.close()
    assert alerts[0]["labels"]["alertname"] == "SFErrorLogged"
    assert alerts[0]["labels"]["node"] == "node-a"
    assert alerts[0]["annotations"] == {"summary": "stream 12: transcoder degraded",
                                        "stream_id": "12"}
    assert alerts[0]["status"]["state"] == "active"


# --- a real node, scraped by a real Prometheus --------------------------------------------------

@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def node(base_config, tmp_path_factory, receiver):
    platform = Platform(base_config, tmp_path_factory.mktemp("monitoring-node"),
                        SF_ALERT_WEBHOOK_URL=receiver.url, SF_WS_CONNECTIONS_PER_ADDRESS="1")
    platform.start()
    yield platform
    platform.stop()


def internal_ports(node: Platform) -> list[int]:
    return [node.config.api_internal_port, node.config.api_internal_port + 1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in the Prometheus text format: (labels, value)."""
    found = []
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            found.append((labels, float(match.group(3))))
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` with these labels (None when absent)."""
    for found, value in samples(text, name):
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return value
    return None


@pytest.fixture(scope="module")
def prometheus(node, tmp_path_factory):
    """Prometheus from conf/prometheus/, scraping the node's two internal ports every second."""
    assert shutil.which("prometheus"), "scripts/bootstrap installs Debian's prometheus"
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in internal_ports(node)]}]
    job.pop("file_sd_configs", None)
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "sf.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "SFTranscoderDegraded":
                rule["for"] = "2s"  # production waits a minute; the expression is unchanged
    (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
    config["rule_files"] = [str(workdir / "rules.yml")]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--log.level=warn"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{PROMETHEUS_PORT}"

    def prometheus_ready() -> bool:
        assert process.poll() is None, (workdir / "prometheus.log").read_text()
        return ready(f"{base}/-/ready")

    try:
        wait_for(prometheus_ready, 60, what="Prometheus to be ready")
        yield base
    finally:
        terminate(process)
        log.close()


def prometheus_api(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}/api/v1/{path}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, expression: str) -> list[dict[str, Any]]:
    return prometheus_api(base, "query?" + urllib.parse.urlencode({"query": expression}))["result"]


def rule_state(base: str, name: str) -> dict[str, Any]:
    for group in prometheus_api(base, "rules?type=alert")["groups"]:
        for rule in group["rules"]:
            if rule["name"] == name:
                return rule  # type: ignore[no-any-return]
    raise AssertionError(f"no rule {name}")


def alerts_named(base: str, name: str) -> list[dict[str, Any]]:
    return [alert for alert in prometheus_api(base, "alerts")["alerts"]
            if alert["labels"]["alertname"] == name]


SECRETS: dict[str, str] = {}  # what the node tests used that no log may hold


def register(node: Platform, username: str) -> dict[str, Any]:
    """An account with a password of its own, every secret of it remembered in SECRETS."""
    password = f"pw-{username}-Xy7!q"
    body = client.register(node.base_url, username, password)
    key = client.stream_key(node.base_url, body["access_token"])
    SECRETS.update({f"{username} password": password, f"{username} access": body["access_token"],
                    f"{username} refresh": body["refresh_token"], f"{username} key": key})
    return {"token": body["access_token"], "key": key}


async def open_viewers(node: Platform, stream_id: int, token: str) -> tuple[int, int]:
    """A signed-in viewer (ticket) and two anonymous ones from the same address, where only one
    per process is allowed: (connected, refused with 429)."""
    ws_base = node.base_url.replace("http://", "ws://")
    status, body, _ = node.request("POST", "/api/ws/ticket", token=token)
    assert status == 200
    SECRETS["ticket"] = body["ticket"]
    urls = [f"{ws_base}/ws/streams/{stream_id}/viewers?ticket={body['ticket']}",
            f"{ws_base}/ws/streams/{stream_id}/viewers",
            f"{ws_base}/ws/streams/{stream_id}/viewers"]
    sockets, refused = [], 0
    for url in urls:
        try:
            socket = await tornado.websocket.websocket_connect(url)
        except tornado.httpclient.HTTPClientError as error:
            assert error.code == 429
            refused += 1
            continue
        message = await asyncio.wait_for(socket.read_message(), 30)
        assert message is not None and json.loads(message)["type"] == "viewers"
        sockets.append(socket)
    for socket in sockets:
        socket.close(1000)
    await asyncio.sleep(0.5)
    return len(sockets), refused


@pytest.mark.platform
def test_metrics_of_every_process_cover_the_node(node):
    streamer = register(node, "metered")
    publisher = node.publish(streamer["key"], seconds=120)
    try:
        stream = wait_for(lambda: node.live_stream_of("metered"), 20, what="the stream to go live")
        first, second = internal_ports(node)
        wait_for(lambda: sample(scrape(first), "sf_transcoder_speed", stream_id=str(stream["id"])),
                 60, what="the transcoder's progress")
        connected, refused = asyncio.run(open_viewers(node, stream["id"], streamer["token"]))
        assert connected >= 1 and refused >= 1
        # nginx-rtmp computes bandwidth over 10-second windows.
        ingest = wait_for(lambda: (text := scrape(first)) and
                          sample(text, "sf_rtmp_publishers") == 1 and
                          (sample(text, "sf_rtmp_bandwidth_in_bits_per_second") or 0) > 0 and text,
                          60, what="nginx-rtmp's stat to show the publisher and its bandwidth")
        other = scrape(second)
    finally:
        publisher.kill()
        publisher.wait()
    sid = str(stream["id"])
    for text in (ingest, other):
        assert sample(text, "sf_dependency_up", dependency="postgres") == 1
        assert sample(text, "sf_dependency_up", dependency="redis") == 1
        assert sample(text, "sf_db_pool_max_connections") == node.config.database_pool_max
        assert sample(text, "sf_db_pool_connections", state="idle") is not None
        assert sample(text, "sf_db_pool_connections", state="busy") is not None
        assert sample(text, "sf_media_disk_size_bytes") > sample(text, "sf_media_disk_free_bytes") > 0
        assert sample(text, "sf_ws_connections") is not None and sample(text, "sf_viewers") is not None
    # Requests by route and status, latency by route and status (the scrape above counts too).
    both = ingest + other
    routes = {(labels["handler"], labels["status"])
              for labels, _ in samples(both, "sf_http_requests_total")}
    assert ("UserStreamsHandler", "200") in routes and ("RegisterHandler", "201") in routes, routes
    buckets = {(labels["handler"], labels["status"], labels["le"])
               for labels, _ in samples(both, "sf_http_request_duration_seconds_bucket")}
    assert ("RegisterHandler", "201", "0.2") in buckets, buckets
    # WebSockets: the connections were counted on one process or the other, the 429s too.
    opened = sum(sample(text, "sf_ws_connections_opened_total") or 0 for text in (ingest, other))
    assert opened == connected
    assert sum(sample(text, "sf_ws_messages_sent_total") or 0 for text in (ingest, other)) >= connected
    assert sum(sample(text, "sf_rate_limit_rejections_total", bucket="ws") or 0
               for text in (ingest, other)) == refused
    # The ingest process (0) has the node's streams, transcoders and nginx-rtmp; process 1 not.
    assert sample(ingest, "sf_live_streams") == 1
    assert sample(ingest, "sf_transcoder_fps", stream_id=sid) > 0
    assert sample(ingest, "sf_transcoder_restarts", stream_id=sid) is not None
    assert sample(ingest, "sf_transcoder_degraded", stream_id=sid) == 0
    assert sample(ingest, "sf_rtmp_up") == 1
    assert sample(ingest, "sf_rtmp_players") >= 1  # the transcoder's pull
    assert sample(ingest, "sf_rtmp_bandwidth_in_bits_per_second") > 0
    assert sample(ingest, "sf_rtmp_received_bytes_total") > 0
    # Per stream: present, labelled by id (its 10 s window may read 0 on a loaded machine).
    assert sample(ingest, "sf_rtmp_stream_bandwidth_in_bits_per_second", stream_id=sid) is not None
    assert sample(other, "sf_rtmp_up") is None and sample(other, "sf_live_streams") == 0
    # No label anywhere carries the stream key.
    assert streamer["key"] not in both


@pytest.mark.platform
def test_rtmp_stat_is_behind_the_control_secret_and_parses(node):
    url = f"{node.config.media_node_url}/stat"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 403
    request = urllib.request.Request(url, headers={"X-SF-Control": node.config.internal_secret})
    with urllib.request.urlopen(request, timeout=5) as response:
        stat = parse_stat(response.read())
    assert stat.accepted >= 1  # the publishers and pulls of the tests so far
    with pytest.raises(ValueError):
        parse_stat(b"<html>not the stat</html>")


@pytest.mark.platform
def test_prometheus_sees_a_crash_looping_transcoder_fire_an_alert_that_then_resolves(
        node, prometheus, receiver):
    wait_for(lambda: len(query(prometheus, 'up{job="sf-api"} == 1')) == 2, 30,
             what="Prometheus to scrape both API processes")
    wait_for(lambda: rule_state(prometheus, "SFTranscoderDegraded")["lastEvaluation"]
             > "2000", 15, what="a first rule evaluation")
    assert rule_state(prometheus, "SFTranscoderDegraded")["state"] == "inactive"
    assert query(prometheus, 'sf_dependency_up{dependency="postgres"} == 1')
    streamer = register(node, "crashy")
    publisher = node.publish(streamer["key"], seconds=240)
    try:
        stream = wait_for(lambda: node.live_stream_of("crashy"), 20, what="the stream to go live")
        sid = stream["id"]
        wait_for(lambda: query(prometheus, "sf_rtmp_publishers == 1"), 20,
                 what="Prometheus to see the publisher through nginx-rtmp's stat")
        # Kill every transcoder of the stream as soon as it appears, until the alert fires.
        killed: set[int] = set()
        started = time.monotonic()

        def kill_until_firing() -> bool:
            for pid in node.transcoder_pids(sid):
                if pid not in killed:
                    killed.add(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            firing = [a for a in alerts_named(prometheus, "SFTranscoderDegraded")
                      if a["state"] == "firing"]
            return bool(firing) and firing

        firing = wait_for(kill_until_firing, 120, interval=0.2,
                          what="SFTranscoderDegraded to fire")
        fired_after = time.monotonic() - started
        assert firing[0]["labels"]["stream_id"] == str(sid)
        assert firing[0]["labels"]["severity"] == "critical"
        assert len(killed) >= 5
        crash_loop = [a for a in alerts_named(prometheus, "SFTranscoderCrashLoop")
                      if a["labels"]["stream_id"] == str(sid)]
        assert crash_loop and crash_loop[0]["state"] == "firing"
        # Left alone, FFmpeg runs steadily again and the alert resolves.
        resolved_started = time.monotonic()
        wait_for(lambda: not alerts_named(prometheus, "SFTranscoderDegraded"), 120, interval=1,
                 what="SFTranscoderDegraded to resolve")
        resolved_after = time.monotonic() - resolved_started
        assert rule_state(prometheus, "SFTranscoderDegraded")["state"] == "inactive"
        assert node.transcoder_pids(sid)
    finally:
        publisher.kill()
        publisher.wait()
    print(f"\nSFTranscoderDegraded fired {fired_after:.1f} s after the first kill "
          f"({len(killed)} transcoders killed); resolved {resolved_after:.1f} s after it fired")
    # The ERROR event of the same crash loop reached the webhook, with its stream id.
    degraded = wait_for(lambda: [a for a in receiver.alerts
                                 if a["annotations"].get("stream_id") == str(sid)], 10,
                        what="the webhook's alert")
    assert degraded[0]["labels"]["alertname"] == "SFErrorLogged"
    assert degraded[0]["labels"]["logger"] == "sf.actors.stream"
    assert "degraded" in degraded[0]["annotations"]["summary"]


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:200]}")
    return parsed


@pytest.mark.platform
def test_node_logs_are_json_with_stream_and_request_ids_and_no_secret(node, receiver):
    records = json_lines(node.api_log)

    def having(message: str, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in records if r.get("message", "").startswith(message)
                and all(r.get(k) == v for k, v in fields.items())]

    live = [r for r in records if r.get("event") == "live"]
    assert len(live) >= 2 and all(isinstance(r["stream_id"], int) for r in live)
    sid = live[0]["stream_id"]
    published = having("media callback on_publish", status=302, stream_id=sid)
    assert published and published[0]["request_id"] and published[0]["callback"] == "on_publish"
    assert having("media callback on_publish_done", stream_id=sid)
    assert having("viewer connected", stream_id=sid)[0]["request_id"]
    assert having("viewer disconnected", stream_id=sid)[0]["close_code"] == 1000
    assert having("stream", event="actor_started", stream_id=sid)
    assert having("stream", event="actor_stopped", stream_id=sid)
    assert having("stream", event="ffmpeg_started", stream_id=sid)
    exits = [r for r in records if r.get("event") == "ffmpeg_exited"]
    assert any(r["returncode"] == -9 and r["stream_id"] != sid and r["restarts"] >= 1
               for r in exits)  # the killed transcoders of the crash-loop test
    assert [r for r in records if r.get("event") == "ffmpeg_degraded"][0]["level"] == "ERROR"
    access = [r for r in records if r.get("logger") == "sf.access"]
    assert access and all(r["request_id"] for r in access)
    # No secret of the tests, nor of the node, in any log file or alert.
    config = node.config
    secrets = {**SECRETS, "internal": config.internal_secret, "jwt": config.jwt_secret,
               "lookup": config.stream_key_lookup_secret}
    assert {"ticket", "crashy key", "metered refresh"} <= set(secrets)
    texts = {"the node's logs (API, nginx, FFmpeg)": node.logs(),
             "the webhook": json.dumps(receiver.alerts)}
    for where, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} secret reached {where}"
