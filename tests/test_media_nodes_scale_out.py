"""Two media nodes behind one edge (issue 19, point 4), driven from outside.

Node A runs the public edge (as `make run` does) in front of both nodes' API processes and both
nodes' media nginx; node B is a media node of its own (nginx-rtmp, API processes, FFmpeg, its
own media dir), sharing PostgreSQL and Redis. Encoders reach them through an RTMP balancer
(nginx's TCP proxy, round robin), or a node's own RTMP port.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.platform import Platform, start_platforms, wait_for
from harness.ports import reserve_port, reserve_ports
from sf.media.process import die_with_parent
from sf.media.process import stop as terminate

pytestmark = pytest.mark.platform

BALANCER_PORT = reserve_port()
GRACE = "20"


class RtmpBalancer:
    """nginx's stream (TCP) proxy over the nodes' RTMP ports, as a cloud TCP load balancer."""

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;\n"
                          for port in ports)
        self.conf = workdir / "balancer.conf"
        self.conf.write_text(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
            f"worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
            "events { worker_connections 256; }\n"
            "stream {\n    upstream rtmp {\n" + servers + "    }\n"
            f"    server {{\n        listen 127.0.0.1:{BALANCER_PORT};\n"
            "        proxy_connect_timeout 1s;\n        proxy_pass rtmp;\n    }\n}\n")
        binary = shutil.which("nginx") or "nginx"
        self.process = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(self.conf), "-e", str(workdir / "error.log"),
             "-g", "daemon off;"], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        time.sleep(0.3)
        assert self.process.poll() is None, (workdir / "error.log").read_text()
        self.url = f"rtmp://127.0.0.1:{BALANCER_PORT}/live"

    def stop(self) -> None:
        terminate(self.process)


@pytest.fixture(scope="module")
def nodes(base_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("two-media-nodes")
    common = {"SF_PUBLISH_GRACE_SECONDS": GRACE, "SF_SEGMENT_RETENTION_SECONDS": "60"}
    node_b = Platform(base_config, work / "b", edge=False, **common)
    a_api, a_origin = reserve_ports(2)
    b = node_b.config
    node_a = Platform(base_config, work / "a", **common,
        SF_API_PORT=str(a_api), SF_MEDIA_HTTP_PORT=str(a_origin),
        SF_EDGE_API_SERVERS=f"127.0.0.1:{a_api},127.0.0.1:{b.api_port}",
        SF_EDGE_MEDIA_ORIGINS=f"127.0.0.1:{a_origin},127.0.0.1:{b.media_http_port}")
    start_platforms(node_b, node_a)
    balancer = RtmpBalancer(work / "balancer", [node_a.config.rtmp_port, b.rtmp_port])
    yield node_a, node_b, balancer
    balancer.stop()
    node_a.stop()
    node_b.stop()


def publish_to(platform: Platform, url: str, key: str, seconds: float = 120) -> Any:
    """An FFmpeg encoder pushing to `url` (a node's RTMP port or the balancer)."""
    rtmp, platform.rtmp = platform.rtmp, url
    try:
        return platform.publish(key, seconds=seconds)
    finally:
        platform.rtmp = rtmp


def playlist(edge: Platform, path: str) -> bytes | None:
    status, body, _ = edge.get(path)
    return body if status == 200 else None


def sequence(body: bytes | None) -> int:
    for line in (body or b"").decode().splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":")[1])
    return -1


def watchable(edge: Platform, base: str) -> bool:
    """The stream's 360p playlist through the edge advances and its newest segment downloads."""
    first = sequence(playlist(edge, f"{base}/360p/index.m3u8"))
    if first < 0:
        return False
    wait_for(lambda: sequence(playlist(edge, f"{base}/360p/index.m3u8")) > first, 10,
             interval=0.2, what="the playlist to advance")
    body = playlist(edge, f"{base}/360p/index.m3u8") or b""
    segment = [line for line in body.decode().splitlines() if line.endswith(".ts")][-1]
    return edge.get(f"{base}/360p/{segment}")[0] == 200


def transcoding_node(nodes: tuple[Platform, ...], stream_id: int) -> Platform | None:
    return next((node for node in nodes if node.transcoder_pids(stream_id)), None)


class RawViewer:
    """A viewer WebSocket, read on the test's own thread (server frames are unmasked)."""

    def __init__(self, port: int, stream_id: int, origin_port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall((f"GET /ws/streams/{stream_id}/viewers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Origin: http://127.0.0.1:{origin_port}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def message(self) -> dict[str, Any]:
        while True:
            first, second = self._exactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._exactly(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._exactly(8))[0]
            payload = self._exactly(length)
            if first & 0x0F == 1:
                return json.loads(payload)  # type: ignore[no-any-return]

    def until(self, predicate: Any, timeout: float) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.message()
            if predicate(message):
                return message
        raise AssertionError("no such message")

    def close(self) -> None:
        self.sock.close()


def test_streams_on_either_node_play_through_the_one_edge(nodes):
    node_a, node_b, balancer = nodes
    users = [node_a.register(f"spread{index}") for index in range(2)]
    owner = node_a.register("spreadprivate")
    node_a.request("PUT", "/api/stream/settings", {"is_private": True}, token=owner["token"])
    for user in (*users, owner):
        publish_to(node_a, balancer.url, user["key"])
    ids = [wait_for(lambda n=f"spread{i}": node_a.live_stream_of(n), 25, what="live")["id"]
           for i in range(2)]
    private_id = wait_for(lambda: node_a.request(
        "GET", "/api/users/spreadprivate/streams", token=owner["token"])[1]["data"], 25,
        what="the private stream")[0]["id"]
    holders = {sid: wait_for(lambda s=sid: transcoding_node((node_a, node_b), s), 20,
                             what="a transcoder") for sid in (*ids, private_id)}
    # The balancer spread the encoders: each node transcodes at least one of them.
    assert {id(node) for node in holders.values()} == {id(node_a), id(node_b)}
    for sid in ids:
        assert wait_for(lambda s=sid: watchable(node_a, f"/hls/{s}"), 30, what="playback")
    signed = node_a.stream(private_id, token=owner["token"])["playback"]["hls"]
    base = signed.removesuffix("/master.m3u8")
    assert wait_for(lambda: watchable(node_a, base), 30, what="signed playback")
    assert node_a.get(f"/hls/{private_id}/360p/index.m3u8")[0] == 404
    assert node_a.get(f"/hls/{private_id}/master.m3u8")[0] == 404


def test_an_encoder_that_reconnects_to_the_other_node_continues_its_stream(nodes):
    node_a, node_b, _ = nodes
    user = node_a.register("hopper")
    first = publish_to(node_a, node_a.rtmp, user["key"])
    sid = wait_for(lambda: node_a.live_stream_of("hopper"), 25, what="live")["id"]
    assert wait_for(lambda: watchable(node_a, f"/hls/{sid}"), 30, what="playback on A")
    first.kill()
    first.wait()
    wait_for(lambda: not node_a.transcoder_pids(sid), 15, what="A's transcoder to stop")
    publish_to(node_a, node_b.rtmp, user["key"])
    wait_for(lambda: node_b.transcoder_pids(sid), 20, what="B's transcoder")
    assert node_a.live_stream_of("hopper")["id"] == sid  # the same stream, not a new one
    # The edge now plays B's playlists (A holds the old run's files but serves no playlist).
    assert wait_for(lambda: watchable(node_a, f"/hls/{sid}"), 30, what="playback from B")
    status, _, _ = node_a.get(f"/hls/{sid}/master.m3u8")
    assert status == 200
    on_a = node_a.config.media_dir / "hls" / str(sid)
    assert not (on_a / ".live").exists()


def test_a_killed_media_node_takes_its_streams_offline_and_they_resume_on_the_other(nodes):
    node_a, node_b, balancer = nodes
    user = node_a.register("survivor")
    publish_to(node_a, node_b.rtmp, user["key"], seconds=300)
    sid = wait_for(lambda: node_a.live_stream_of("survivor"), 25, what="live")["id"]
    assert wait_for(lambda: watchable(node_a, f"/hls/{sid}"), 30, what="playback from B")
    viewer = RawViewer(node_a.config.api_port, sid, node_a.config.http_port)
    try:
        viewer.until(lambda m: m["type"] == "viewers", 10)
        killed = time.monotonic()
        node_b.kill()
        message = viewer.until(lambda m: m["type"] == "stream" and m["is_live"] is False, 20)
        assert message["stream_id"] == sid
        assert time.monotonic() - killed <= 15
        assert node_a.stream(sid)["is_live"] is False
        # The encoder reconnects (through the balancer, which skips the dead node) in grace.
        publish_to(node_a, balancer.url, user["key"], seconds=120)
        viewer.until(lambda m: m["type"] == "stream" and m["is_live"] is True, 30)
        assert node_a.stream(sid)["is_live"] is True
        wait_for(lambda: node_a.transcoder_pids(sid), 20, what="A's transcoder")
        assert wait_for(lambda: watchable(node_a, f"/hls/{sid}"), 30, what="playback from A")
    finally:
        viewer.close()
