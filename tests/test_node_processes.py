"""A node of two API processes behaves as one: whichever process a request, a WebSocket or an
nginx-rtmp callback reaches, the outcome is the same, and the supervisor keeps both running.

Each process is reached directly on its own private port (SF_API_INTERNAL_PORT + index), so
the test decides which process serves what instead of leaving it to the kernel.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from harness.client import connect
from harness.platform import Platform, wait_for

pytestmark = pytest.mark.platform


def children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return sorted(int(child) for child in result.stdout.split())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def node(base_config, tmp_path_factory):
    platform = Platform(base_config, tmp_path_factory.mktemp("two-processes"),
                        SF_API_PROCESSES="2").start()
    yield platform
    platform.stop()


def process_url(node: Platform, index: int) -> str:
    return f"http://127.0.0.1:{node.config.api_internal_port + index}"


def at(node: Platform, index: int, method: str, path: str,
       token: str | None = None) -> tuple[int, Any]:
    """A JSON request to process `index` of the node, on its private port."""
    status, body, _ = node.request_node({"url": process_url(node, index)}, method, path,
                                        token=token)
    return status, body


def raw(node: Platform, index: int, method: str, path: str,
        form: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """Status, body and Location of a request to process `index` (redirects not followed)."""
    connection = http.client.HTTPConnection("127.0.0.1", node.config.api_internal_port + index,
                                            timeout=15)
    try:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Location") or ""
    finally:
        connection.close()


def callback(node: Platform, index: int, hook: str, secret: str | None = None,
             **fields: str) -> tuple[int, bytes, str]:
    """nginx-rtmp's callback `hook`, as nginx would post it, to process `index`."""
    query = urllib.parse.urlencode({"secret": secret or node.config.internal_secret})
    return raw(node, index, "POST", f"/internal/rtmp/{hook}?{query}", fields)


def metric(node: Platform, index: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples on process `index` that carry `labels`."""
    status, text, _ = raw(node, index, "GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_process_answers_on_its_own_port_under_its_own_identity(node):
    for index in (0, 1):
        status, body = at(node, index, "GET", "/readyz")
        assert status == 200, body
        status, metrics, _ = raw(node, index, "GET", "/metrics")
        assert status == 200 and b"sf_http_requests_total" in metrics
    assert len(children_of(node.api_process.pid)) == 2
    log = node.api_log.read_text()
    assert f"API node {node.config.node_id}.0 listening" in log
    assert f"API node {node.config.node_id}.1 listening" in log


def test_callbacks_streams_and_viewers_are_the_same_on_either_process(node):
    streamer = node.register("twoproc")
    publisher = node.publish(streamer["key"])
    stream = wait_for(lambda: node.live_stream_of("twoproc"), 20, what="live")
    stream_id = stream["id"]
    transcoders = wait_for(lambda: node.transcoder_pids(stream_id), 15, what="the transcoder")
    ingest_process = children_of(node.api_process.pid)[0]
    assert all(os.getppid() != pid for pid in transcoders)
    parents = {int(Path(f"/proc/{pid}/stat").read_text().split()[3]) for pid in transcoders}
    assert parents == {ingest_process}  # the actors live in process 0 only

    assert (metric(node, 0, "sf_live_streams"), metric(node, 1, "sf_live_streams")) == (1, 0)

    # A callback that reaches process 1 is answered by the ingest process, as if sent there.
    handled = metric(node, 0, "sf_http_requests_total", handler="OnUpdateHandler")
    status, body, _ = callback(node, 1, "on_update", call="update_publish", app="live",
                               name=str(stream_id))
    assert (status, body) == (200, b"ok")
    assert metric(node, 0, "sf_http_requests_total", handler="OnUpdateHandler") == handled + 1
    for index in (0, 1):
        status, body, _ = callback(node, index, "on_update", call="update_publish", app="live",
                                   name=str(stream_id))
        assert (status, body) == (200, b"ok")
        status, body, location = callback(node, index, "on_publish", app="live",
                                          name="live_not-a-real-key")
        assert status == 403 and location == ""
    # Without the secret, process 1 refuses by itself and forwards nothing.
    status, _, _ = callback(node, 1, "on_update", secret="wrong", call="update_publish",
                            app="live", name=str(stream_id))
    assert status == 403

    async def viewers() -> None:
        # One viewer on each process: both see the node's total.
        first = await connect(process_url(node, 0), stream_id, origin=node.base_url)
        second = await connect(process_url(node, 1), stream_id, origin=node.base_url)
        await first.until(lambda v: v.viewers() == 2, what="both viewers on process 0")
        await second.until(lambda v: v.viewers() == 2, what="both viewers on process 1")
        # The owner ends the stream through process 1: process 0 stops its actor, the
        # publisher is dropped, and the viewer on process 0 hears that the stream ended.
        status, body = at(node, 1, "DELETE", f"/api/streams/{stream_id}",
                          token=streamer["token"])
        assert status == 204, body
        await first.until(lambda v: any(m["type"] == "stream" and m["is_live"] is False
                                                  for m in v.messages),
                          what="the end, on process 0")
        first.close()
        second.close()

    asyncio.run(viewers())
    wait_for(lambda: publisher.poll() is not None, 15, what="the publisher to be dropped")
    wait_for(lambda: not any(pid_alive(pid) for pid in transcoders), 15,
             what="the transcoders to stop")
    for index in (0, 1):  # the stream is gone for nginx-rtmp too, whichever process it asks
        status, body, _ = callback(node, index, "on_update", call="update_publish", app="live",
                                   name=str(stream_id))
        assert status == 404, body


def test_a_crashed_process_is_restarted_and_the_node_stops_whole(node):
    before = children_of(node.api_process.pid)
    os.kill(before[1], signal.SIGKILL)
    wait_for(lambda: len(children_of(node.api_process.pid)) == 2
             and children_of(node.api_process.pid) != before, 15, what="a new process")
    wait_for(lambda: at(node, 1, "GET", "/readyz")[0] == 200, 30, what="process 1 back")
    assert "API process 1 exited (-9); restarting it" in node.api_log.read_text()
    children = children_of(node.api_process.pid)
    node.api_process.send_signal(signal.SIGTERM)
    assert node.api_process.wait(timeout=30) == 0
    wait_for(lambda: not any(pid_alive(pid) for pid in children), 10, what="every process")
