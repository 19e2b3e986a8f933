"""The public edge, attacked the way an outsider did it: through nginx, from real addresses.

Every test talks to a real nginx (rendered from conf/nginx/nginx.conf.template) in front of a
real `sf serve`. Client addresses are real too: Linux routes all of 127.0.0.0/8 to the loopback
interface, so a client socket bound to 127.a.b.c is, for nginx and the API, another machine.
Each run picks its own 127.a.b.* block, so rate-limit counters of an earlier run (Redis, one
minute) never meet this one.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from harness.platform import Platform, wait_for
from harness.ports import reserve_port
from sf.config import Config
from sf.media import nginx
from sf.media.hls import new_thumbnail_name, sign_playback, sign_thumbnail
from sf.node import localservices
from sf.node.tls import write_self_signed
from sf.services.consents import load_privacy_policy

pytestmark = pytest.mark.platform

AUTH_LIMIT = 5  # SF_RATE_LIMIT_AUTH_IP of this module's platform
NGINX_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
SPOOFED_ID = "client-chosen-request-id-0001"
RUN_BLOCK = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"
REPO = Path(__file__).resolve().parents[1]


def address(host: int) -> str:
    """A client address of this run: 127.a.b.<host>."""
    return f"{RUN_BLOCK}.{host}"


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("gateway-node"),
                    SF_RATE_LIMIT_AUTH_IP=str(AUTH_LIMIT)).start()
    yield node
    node.stop()


# --- clients ------------------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage) -> None:
        self.status, self.body, self.headers = status, body, headers

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(port: int, method: str, path: str, *, source: str = "127.0.0.1",
          headers: dict[str, str] | None = None, body: Any = None,
          context: ssl.SSLContext | None = None, timeout: float = 10) -> Response:
    """One request from `source`, the path sent exactly as given (no client-side normalizing)."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           source_address=(source, 0), context=context)
    all_headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        return Response(response.status, response.read(), response.headers)
    finally:
        conn.close()


def policy_version(config: Config) -> str:
    """The privacy policy version a platform serves (registering accepts it)."""
    return load_privacy_policy(config.privacy_policy_file).version


def edge(platform: Platform, method: str, path: str, **kwargs: Any) -> Response:
    """Through the platform's nginx."""
    return fetch(platform.config.http_port, method, path, **kwargs)


def register(platform: Platform, username: str, source: str) -> dict[str, Any]:
    response = edge(platform, "POST", "/api/auth/register", source=source, body={
        "username": username, "email": f"{username}@example.com", "password": "password123",
        "accept_privacy_policy": policy_version(platform.config)})
    assert response.status == 201, response.body
    token = response.json()["access_token"]
    key = edge(platform, "GET", "/api/stream/key", source=source,
               headers={"Authorization": f"Bearer {token}"})
    assert key.status == 200, key.body
    return {"token": token, "key": key.json()["stream_key"], "user": response.json()["user"]}


def go_live(platform: Platform, username: str, source: str) -> tuple[Any, dict[str, Any]]:
    user = register(platform, username, source)
    publisher = platform.publish(user["key"])
    stream = wait_for(lambda: platform.live_stream_of(username), 25, what="the stream to go live")
    return publisher, stream


def nginx_log(platform: Platform) -> str:
    """What the public edge and the node's own nginx logged."""
    return "".join((platform.config.var_dir / "log" / name).read_text(errors="replace")
                   for name in ("edge-access.log", "nginx-access.log")
                   if (platform.config.var_dir / "log" / name).exists())


def api_log_records(platform: Platform) -> list[dict[str, Any]]:
    records = []
    for line in platform.api_log.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# --- 1. the media dir ---------------------------------------------------------------------------

def test_media_serves_single_avatar_and_thumbnail_files_and_nothing_else(platform):
    media = platform.config.media_dir
    private_id, public_id = 990000000 + random.randint(0, 9999), 980000000 + random.randint(0, 9999)
    secret = b"#EXTM3U\n# private playlist, not for strangers\n"
    for stream_id, content in ((private_id, secret), (public_id, b"#EXTM3U\n# public\n")):
        directory = media / "hls" / str(stream_id)
        (directory / "360p").mkdir(parents=True)
        (directory / "master.m3u8").write_bytes(content)
        (directory / "360p" / "index.m3u8").write_bytes(content)
        (directory / "360p" / "seg_00001.ts").write_bytes(b"G" + content)
        (directory / ".live").write_text("a transcoder")  # as a running StreamActor keeps it
    (media / "hls" / str(private_id) / ".private").touch()
    (media / "notes.txt").write_bytes(secret)
    (media / "thumbnails" / ".hidden").write_bytes(secret)

    # A real avatar, uploaded through the API (re-encoded, stored under an unguessable name).
    source = address(10)
    owner = register(platform, "mediaowner", source)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, "PNG")
    conn = http.client.HTTPConnection("127.0.0.1", platform.config.http_port, timeout=10,
                                      source_address=(source, 0))
    conn.request("PUT", "/api/users/profile/avatar", body=picture.getvalue(), headers={
        "Content-Type": "image/png", "Authorization": f"Bearer {owner['token']}"})
    uploaded = conn.getresponse()
    profile = json.loads(uploaded.read())
    conn.close()
    assert uploaded.status == 200, profile
    avatar_url = profile["avatar"]
    assert avatar_url.startswith("/media/avatars/")
    avatar = edge(platform, "GET", avatar_url)
    assert avatar.status == 200 and avatar.body[:4] == b"RIFF"  # WebP
    assert avatar.headers["X-Content-Type-Options"] == "nosniff"
    # A thumbnail as the stream actor names it.
    thumbnail_name = new_thumbnail_name(private_id)
    (media / "thumbnails" / thumbnail_name).write_bytes(b"\xff\xd8\xff thumbnail")
    thumbnail = edge(platform, "GET", f"/media/thumbnails/{thumbnail_name}?v=3")
    assert thumbnail.status == 200 and thumbnail.body == b"\xff\xd8\xff thumbnail"

    # HLS stays where its rules are: public served under /hls/, private refused there.
    assert edge(platform, "GET", f"/hls/{public_id}/master.m3u8").status == 200
    assert edge(platform, "GET", f"/hls/{private_id}/master.m3u8").status == 404

    avatar_dir = avatar_url.rsplit("/", 1)[0]
    refused = [
        f"/media/hls/{private_id}/master.m3u8",
        f"/media/hls/{private_id}/360p/index.m3u8",
        f"/media/hls/{private_id}/360p/seg_00001.ts",
        f"/media/hls/{private_id}/.private",
        f"/media/hls/{public_id}/master.m3u8",  # even public HLS: only under /hls/
        f"/media//hls/{private_id}/master.m3u8",
        f"/media/./hls/{private_id}/master.m3u8",
        "/media/", "/media", "/media/hls/", f"/media/hls/{private_id}/",
        "/media/avatars/", "/media/thumbnails/", f"{avatar_dir}/",
        "/media/notes.txt", "/media/thumbnails/.hidden", "/media/thumbnails/%2ehidden",
        "/media/%2E%2E/notes.txt",
        f"/media/%2e%2e/hls/{private_id}/master.m3u8",
        f"/media/..%2fhls/{private_id}/master.m3u8",
        f"/media/avatars/..%2f..%2fhls%2f{private_id}%2fmaster.m3u8",
        f"/media/thumbnails/..%2F..%2Fmedia%2Fhls%2F{private_id}%2Fmaster.m3u8",
        "/media/thumbnails/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/media/thumbnails/%252e%252e/hls/{private_id}/master.m3u8",
        f"/media/thumbnails/{thumbnail_name}/", f"/media/thumbnails/{thumbnail_name}%00.jpg",
        f"/media/avatars/{thumbnail_name}",  # right name, wrong folder
        f"/hls/{public_id}/..%2f{private_id}/master.m3u8",
        "/nginx.conf",
    ]
    # security.md#raw-path-traversal: nginx chose the location by the normalized path (/api/x)
    # and proxied the raw one to the API, whose /media route followed it into hls/. nginx now
    # refuses such raw paths itself: its own answer ("HTTP 404"), the API never sees them.
    climbing = [
        f"/media/thumbnails/../../api/x#/../../media/hls/{private_id}/master.m3u8",
        f"/media/thumbnails/../../ws/x#/../../media/hls/{private_id}/360p/seg_00001.ts",
        f"/media/thumbnails/../../api/x#/../../media/thumbnails/{thumbnail_name}",
        f"/api/x/..%2f..%2fmedia/hls/{private_id}/master.m3u8",
        f"/api/%2e%2e/media/hls/{private_id}/master.m3u8",
        "/api/users/someone#fragment", "/api/./users/someone", "/api/users/..",
    ]
    for path in climbing:
        response = edge(platform, "GET", path)
        assert response.status == 404, (path, response.status)
        assert json.loads(response.body)["error"]["message"] == "HTTP 404", path
        assert b"private playlist" not in response.body, path
    refused += climbing
    for path in refused:
        response = edge(platform, "GET", path)
        assert response.status in (400, 403, 404), (path, response.status)
        assert b"private playlist" not in response.body, path
    # What climbs out of /media/ lands on the site's own front page (web/), never a file.
    front = edge(platform, "GET", "/")
    assert front.status == 200 and front.headers["Content-Type"].startswith("text/html")
    for path in ("/media/../", "/media/..", "/media/%2e%2e/", "/index.html"):
        response = edge(platform, "GET", path)
        assert response.status in (200, 400, 403, 404), (path, response.status)
        assert response.status != 200 or response.body == front.body, path


# --- 2. who the client is -----------------------------------------------------------------------

def login(platform: Platform, source: str, spoof: str | None = None) -> Response:
    headers = {}
    if spoof:
        headers = {"X-Forwarded-For": spoof, "X-Real-IP": spoof, "Forwarded": f"for={spoof}"}
    return edge(platform, "POST", "/api/auth/login", source=source, headers=headers,
                body={"username": "nobody_here", "password": "wrong password"})


def test_spoofed_forwarded_for_does_not_reset_the_login_limit(platform):
    """security.md#spoofed-forwarded-for, through the public edge."""
    attacker, neighbour = address(20), address(21)
    statuses = [login(platform, attacker, spoof=f"203.0.113.{n}").status
                for n in range(AUTH_LIMIT + 3)]
    assert statuses[:AUTH_LIMIT] == [401] * AUTH_LIMIT, statuses
    assert statuses[AUTH_LIMIT:] == [429] * 3, statuses
    # Another real address has its own budget: the attacker being limited does not limit it...
    assert login(platform, neighbour).status == 401
    assert login(platform, attacker).status == 429
    # ...and it is limited in turn on its own count, not before.
    neighbour_statuses = [login(platform, neighbour).status for _ in range(AUTH_LIMIT)]
    assert neighbour_statuses == [401] * (AUTH_LIMIT - 1) + [429], neighbour_statuses


def test_clients_without_forwarding_headers_get_separate_budgets(platform):
    first, second = address(22), address(23)
    assert [login(platform, first).status for _ in range(AUTH_LIMIT + 1)][-1] == 429
    assert login(platform, second).status == 401


@pytest.mark.parametrize("path", [
    "/healthz", "/readyz", "/api/streams", "/api/v1/streams?access_token=SeCrEtInQuErY",
    "/api/no-such-route", "/ws/streams/1/viewers",
])
def test_every_proxied_location_sets_the_client_identity(platform, path):
    source = address(30)
    response = edge(platform, "GET", path, source=source, headers={
        "X-Request-ID": SPOOFED_ID, "X-Forwarded-For": "198.51.100.7",
        "X-Real-IP": "198.51.100.7", "X-Forwarded-Proto": "https"})
    assert response.status < 500, response.body
    request_id = response.headers["X-Request-ID"]
    assert NGINX_REQUEST_ID.fullmatch(request_id) and request_id != SPOOFED_ID
    # The spoofed X-Forwarded-Proto did not make the API believe this is HTTPS.
    assert "Strict-Transport-Security" not in response.headers
    # nginx logged this very id (so it is nginx's), for the path only, never the query.
    wait_for(lambda: request_id in nginx_log(platform), 5, what="the nginx access log line")
    line = next(line for line in nginx_log(platform).splitlines() if request_id in line)
    assert line.startswith(source + " ") and "?" not in line and "SeCrEt" not in line
    # The API saw the real client address, not the one the client claimed.
    record = wait_for(lambda: next((r for r in api_log_records(platform)
                                    if r.get("request_id") == request_id), None), 5,
                      what="the API access log line")
    assert record["client_ip"] == source
    assert "SeCrEt" not in platform.api_log.read_text(errors="replace")


def test_request_id_from_a_client_talking_to_the_api_directly_is_not_echoed(platform):
    api_port = platform.config.api_port
    direct = fetch(api_port, "GET", "/healthz", source=address(31),
                   headers={"X-Request-ID": SPOOFED_ID})
    assert direct.status == 200
    assert NGINX_REQUEST_ID.fullmatch(direct.headers["X-Request-ID"])
    # From the trusted proxy address (where nginx connects from), the proxy's id is kept.
    proxied = fetch(api_port, "GET", "/healthz", headers={"X-Request-ID": "0123456789abcdef"})
    assert proxied.headers["X-Request-ID"] == "0123456789abcdef"


def test_rendered_config_keeps_identity_headers_and_queries_out_of_the_log(platform):
    conf = (platform.config.var_dir / "edge" / "nginx.conf").read_text()  # the public edge
    assert nginx.unprotected_proxies(conf) == []
    assert conf.count("proxy_pass") == conf.count("proxy_set_header X-Forwarded-For $remote_addr;")
    assert "$proxy_add_x_forwarded_for" not in conf
    log_format = re.search(r"log_format sf ([^;]+);", conf, re.S).group(1)
    assert "$sf_log_uri" in log_format  # $uri with signed prefixes and thumbnail names masked
    for leaky in ("$request ", "$request\"", "$request_uri", "$args", "$query_string", "$arg_"):
        assert leaky not in log_format
    # A location that forgets the snippet is refused at render time.
    broken = conf.replace("proxy_set_header X-Request-ID $request_id;\n", "", 1)
    assert nginx.unprotected_proxies(broken)


def test_refresh_cookie_is_secure_behind_tls(base_config, tmp_path):
    node = Platform(base_config, tmp_path)
    cert, key = write_self_signed(tmp_path / "tls", "127.0.0.1")
    node.nginx_config = node.config.replace(tls_cert=str(cert), tls_key=str(key))
    node.ssl_context = ssl.create_default_context(cafile=str(cert))
    node.base_url = node.base_url.replace("http://", "https://")
    node.start()
    try:
        # A remote client, and one on the proxy's own host (`make run TLS=1` on a laptop);
        # earlier tests spent 127.0.0.1's budget in this Redis database.
        with redis.Redis.from_url(node.config.redis_url) as client:
            for key in client.scan_iter("sf:rl:*127.0.0.1*"):
                client.delete(key)
        for index, source in enumerate((address(40), "127.0.0.1")):
            response = fetch(node.config.http_port, "POST", "/api/auth/register", source=source,
                             context=node.ssl_context, headers={"X-Forwarded-Proto": "http"},
                             body={"username": f"tlsuser{index}",
                                   "email": f"tlsuser{index}@example.com",
                                   "password": "password123",
                                   "accept_privacy_policy": policy_version(node.config)})
            assert response.status == 201, response.body
            cookies = response.headers.get_all("Set-Cookie")
            refresh = next(cookie for cookie in cookies if cookie.startswith("sf_refresh="))
            assert "Secure" in refresh and "HttpOnly" in refresh, source
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        node.stop()


# --- 3. connection exhaustion -------------------------------------------------------------------

def closed_by_server(sockets: dict[int, socket.socket]) -> set[int]:
    """The keys of the sockets that nginx has closed (it answers nothing to a timed-out header)."""
    poller = select.poll()
    by_fd = {sock.fileno(): key for key, sock in sockets.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = set()
    for fd, _ in poller.poll(0):
        key = by_fd[fd]
        try:
            if sockets[key].recv(4096) == b"":
                closed.add(key)
        except (ConnectionResetError, BrokenPipeError):
            closed.add(key)
    return closed


def test_half_open_connections_do_not_starve_health_or_ingest(platform):
    flooder, streamer = address(50), address(51)
    header_timeout = 10
    user = register(platform, "floodstreamer", streamer)
    sockets: list[socket.socket] = []
    started = time.monotonic()
    try:
        for _ in range(1500):
            sock = socket.create_connection(("127.0.0.1", platform.config.http_port), timeout=5,
                                            source_address=(flooder, 0))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: sf\r\n")
            sockets.append(sock)
        opened = time.monotonic() - started
        assert opened < 10, f"opening the flood took {opened:.1f}s"
        publisher = platform.publish(user["key"])  # ingest while HTTP is flooded
        open_ = set(range(len(sockets)))
        latencies = []
        last_trickle = 0.0
        while open_ and time.monotonic() - started < header_timeout + 8:
            if time.monotonic() - last_trickle >= 2:  # one more header line every 2 s
                last_trickle = time.monotonic()
                for index in list(open_):
                    try:
                        sockets[index].sendall(b"X-Trickle: 1\r\n")
                    except OSError:
                        open_.discard(index)
            open_ -= closed_by_server({index: sockets[index] for index in open_})
            before = time.monotonic()
            health = edge(platform, "GET", "/healthz", timeout=5)
            latencies.append(time.monotonic() - before)
            assert health.status == 200
            time.sleep(0.3)
        lasted = time.monotonic() - started
        assert not open_, f"{len(open_)} half-open connections still held after {lasted:.0f}s"
        assert max(latencies) < 1.5, f"/healthz took up to {max(latencies):.2f}s under the flood"
        stream = wait_for(lambda: platform.live_stream_of("floodstreamer"), 20,
                          what="the publish made during the flood to go live")
        assert stream["is_live"]
        publisher.kill()
    finally:
        for sock in sockets:
            sock.close()


def hold_requests(port: int, source: str, count: int, path: str) -> list[socket.socket]:
    """`count` requests whose header is complete but whose body never comes: each stays in
    progress (counted by limit_conn) until client_body_timeout."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                        source_address=(source, 0))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: sf\r\nContent-Type: application/json\r\n"
                     "Content-Length: 64\r\n\r\n".encode())
        held.append(sock)
    return held


def answered_429(sockets: list[socket.socket], wait: float = 2.0) -> list[socket.socket]:
    refused = []
    deadline = time.monotonic() + wait
    pending = {sock.fileno(): sock for sock in sockets}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            poller.unregister(fd)
            sock = pending.pop(fd)
            data = sock.recv(4096)
            if data.startswith(b"HTTP/1.1 429"):
                assert b'"rate_limited"' in data
                refused.append(sock)
    return refused


def test_connections_beyond_the_per_address_limit_are_refused(platform):
    port = platform.config.http_port
    greedy, other = address(60), address(61)
    sockets = hold_requests(port, greedy, nginx.LIMIT_CONN_HTTP + 20, "/api/auth/login")
    try:
        refused = answered_429(sockets)
        assert len(refused) == 20, f"{len(refused)} of {len(sockets)} refused"
        assert edge(platform, "GET", "/healthz", source=greedy).status == 429
        assert edge(platform, "GET", "/healthz", source=other).status == 200
        # WebSockets have their own, larger budget: the HTTP limit does not close them.
        assert edge(platform, "GET", "/ws/streams/1/viewers", source=greedy).status != 429
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: edge(platform, "GET", "/healthz", source=greedy).status == 200, 5,
             what="the address to get its connections back")


def test_websocket_connections_have_a_generous_per_address_limit(platform):
    port = platform.config.http_port
    campus = address(62)
    sockets = hold_requests(port, campus, nginx.LIMIT_CONN_WS + 10, "/ws/streams/1/viewers")
    try:
        refused = answered_429(sockets)
        assert len(refused) == 10, f"{len(refused)} of {len(sockets)} refused"
        assert edge(platform, "GET", "/healthz", source=campus).status == 200
    finally:
        for sock in sockets:
            sock.close()


# --- 4. RTMP play and the control endpoint ------------------------------------------------------

MEDIA_BYTES = 32 * 1024  # more than nginx-rtmp's status messages: audio and video came


def amf(*values: Any) -> bytes:
    """AMF0: numbers, strings, null and flat objects of strings, enough for RTMP commands."""
    out = b""
    for value in values:
        if value is None:
            out += b"\x05"
        elif isinstance(value, float):
            out += b"\x00" + struct.pack(">d", value)
        elif isinstance(value, str):
            out += b"\x02" + struct.pack(">H", len(value)) + value.encode()
        else:
            out += b"\x03"
            for name, item in value.items():
                out += struct.pack(">H", len(name)) + name.encode() + amf(item)
            out += b"\x00\x00\x09"
    return out


def rtmp_message(chunk_stream: int, message_type: int, stream_id: int, payload: bytes) -> bytes:
    header = bytes([chunk_stream]) + b"\x00\x00\x00" + len(payload).to_bytes(3, "big")
    return header + bytes([message_type]) + struct.pack("<I", stream_id) + payload


def rtmp_play(port: int, name: str, source: str, wait: float = 4.0) -> tuple[bytes, bool]:
    """A minimal RTMP player (plain handshake, connect, createStream, play): what it received
    after the handshake, and whether the server closed the connection within `wait` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=1, source_address=(source, 0))
    received = b""
    with sock:
        sock.sendall(b"\x03" + bytes(1536))  # C0, C1 (version 0: the plain handshake)
        while len(received) < 1 + 1536 * 2:
            chunk = sock.recv(65536)
            if not chunk:
                return received, True
            received += chunk
        sock.sendall(received[1:1537])  # C2 echoes S1
        received = received[1 + 1536 * 2:]
        sock.sendall(rtmp_message(2, 1, 0, struct.pack(">I", 4096)))  # set chunk size
        tc_url = f"rtmp://127.0.0.1:{port}/live"
        sock.sendall(rtmp_message(3, 20, 0, amf("connect", 1.0, {
            "app": "live", "tcUrl": tc_url, "flashVer": "LNX 9,0,124,2", "type": "nonprivate"})))
        sock.sendall(rtmp_message(3, 20, 0, amf("createStream", 2.0, None)))
        sock.sendall(rtmp_message(8, 20, 1, amf("play", 3.0, None, name)))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and len(received) < MEDIA_BYTES:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


def test_rtmp_play_only_from_loopback_and_control_needs_the_secret(platform):
    publisher, stream = go_live(platform, "privateplay", address(70))
    sid = stream["id"]
    port = platform.config.rtmp_port
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")
    # The node's own FFmpeg address may play: the video flows (and this client works)...
    media, closed = rtmp_play(port, str(sid), "127.0.0.1")
    assert not closed and len(media) >= MEDIA_BYTES
    # ...any other address may connect (publishers must) but is cut off at `play`, before any
    # audio or video. (nginx-rtmp's live module announces NetStream.Play.Start before the access
    # check runs, so the sign is the closed connection, and nginx's log.)
    for source in (address(71), "127.0.0.2"):
        answer, closed = rtmp_play(port, str(sid), source)
        assert b"NetConnection.Connect.Success" in answer  # it reached nginx-rtmp
        assert closed and len(answer) < 4096, (closed, len(answer))
    error_log = (platform.config.var_dir / "log" / "nginx-error.log").read_text()
    assert f"access forbidden by rule, client: {address(71)}" in error_log

    control = platform.config.media_control_port
    drop = f"/control/drop/publisher?app=live&name={sid}"
    assert fetch(control, "GET", drop).status == 403
    assert fetch(control, "GET", drop, headers={"X-SF-Control": "wrong-secret-0000000"}).status == 403
    assert fetch(control, "GET", drop, source=address(72),
                 headers={"X-SF-Control": ""}).status == 403
    assert fetch(control, "GET", "/control/record/start?app=live&name=1",
                 headers={"X-SF-Control": platform.config.internal_secret}).status != 200
    time.sleep(1)
    assert publisher.poll() is None  # refused attempts dropped nothing
    dropped = fetch(control, "GET", drop, headers={"X-SF-Control": platform.config.internal_secret})
    assert dropped.status == 200 and dropped.body == b"1"
    assert publisher.wait(timeout=10) is not None


def assert_nginx_answer_policy(response: Response) -> None:
    """An answer nginx wrote itself: JSON, with the API's standing headers."""
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Content-Security-Policy"] == \
        "default-src 'none'; frame-ancestors 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.headers["X-Request-ID"]) == 32


# --- the edge on its own machine: `sf edge` (compose's and Kubernetes' gateway) ---------------

class SeparateEdge:
    """`sf edge` as its own process, as the gateway container runs it: its own var dir and port,
    no secret but the internal one (it gets no var/secrets and none of the API's keys)."""

    def __init__(self, workdir: Path, port: int, api: str, media: str, secret: str) -> None:
        self.port = port
        self.var_dir = workdir / "var"
        env = {name: value for name, value in os.environ.items() if not name.startswith("SF_")}
        env.update({"SF_VAR_DIR": str(self.var_dir), "SF_HTTP_HOST": "127.0.0.1",
                    "SF_HTTP_PORT": str(port), "SF_EDGE_WORKERS": "1", "SF_ENV": "production",
                    "SF_EDGE_API_SERVERS": api, "SF_EDGE_MEDIA_ORIGINS": media,
                    "SF_INTERNAL_SECRET": secret})
        self.log = workdir / "edge.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sf.app", "edge"], env=env,
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                fetch(port, "GET", "/nope")
                return True
            except OSError:
                return False

        try:
            wait_for(up, 15, what="sf edge")
        except BaseException:
            self.stop()
            raise

    def nginx_pids(self) -> list[int]:
        pid_file = self.var_dir / "edge" / "nginx.pid"
        master = int(pid_file.read_text()) if pid_file.exists() else 0
        found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        return [master, *map(int, found.stdout.split())] if master else []

    def stop(self) -> int | None:
        pids = self.nginx_pids()
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            # (nginx's master dies with `sf edge`, its workers would not: they go too.)
            for pid in [self.process.pid, *pids]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
            return None


@pytest.fixture(scope="module")
def media_node(base_config, tmp_path_factory):
    """A media node behind a separate edge, as the compose and Kubernetes media nodes run:
    `sf node --no-edge` (media nginx and API processes, no public port)."""
    node = Platform(base_config, tmp_path_factory.mktemp("edgeless-node"), edge=False)
    with open(node.api_log, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "sf.app", "node", "--no-edge"],
                                   env=node.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is None and node._node_ready(
            {"url": f"http://127.0.0.1:{node.config.api_port}"}), 30, what="sf node --no-edge")
        yield node
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, node.api_log.read_text()[-2000:]


def test_sf_edge_in_front_of_a_media_node_passes_what_it_serves_and_answers_in_the_api_shape(
        media_node, tmp_path):
    """The gateway of compose and Kubernetes (`sf edge`), run for real in front of a node without
    an edge (security.md#gateway-loses-client-address, on the shape deployed now): a private
    stream's signed thumbnail and a 2 MB avatar pass; the client's address reaches the API; the
    edge's own answers are JSON with the API's standing headers; SIGTERM stops it whole."""
    node = media_node.config
    assert not localservices.port_open(node.http_port)  # the node has no public port itself
    port = reserve_port()
    gateway = SeparateEdge(tmp_path, port, f"127.0.0.1:{node.api_port}",
                           f"127.0.0.1:{node.media_http_port}", node.internal_secret)
    try:
        # A private stream's thumbnail under its signed prefix (the origin checks the signature).
        stream_id = 970000000 + random.randint(0, 9999)
        name = new_thumbnail_name(stream_id)
        media = node.media_dir / "thumbnails"
        (media / name).write_bytes(b"\xff\xd8\xff private thumbnail")
        (media / f"{stream_id}.private").touch()
        signed = sign_thumbnail(f"/media/thumbnails/{name}", stream_id, node.internal_secret, 60)
        assert signed is not None
        response = fetch(port, "GET", signed, source=address(80))
        assert response.status == 200 and response.body.endswith(b"private thumbnail")
        assert fetch(port, "GET", f"/media/thumbnails/{name}", source=address(80)).status == 404

        # An avatar of 2 MB (the API takes up to SF_MAX_AVATAR_BYTES, 5 MB), then served back.
        source = address(81)
        response = fetch(port, "POST", "/api/auth/register", source=source, body={
            "username": "gatewayavatar", "email": "gatewayavatar@example.com",
            "password": "password123", "accept_privacy_policy": policy_version(node)})
        assert response.status == 201, response.body
        token = response.json()["access_token"]
        picture = io.BytesIO()
        Image.frombytes("RGB", (900, 900), random.randbytes(900 * 900 * 3)).save(picture, "PNG")
        assert picture.tell() > 2_000_000
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                          source_address=(source, 0))
        conn.request("PUT", "/api/users/profile/avatar", body=picture.getvalue(), headers={
            "Content-Type": "image/png", "Authorization": f"Bearer {token}",
            "X-Request-ID": SPOOFED_ID, "X-Forwarded-For": "198.51.100.7"})
        uploaded = conn.getresponse()
        profile = json.loads(uploaded.read())
        conn.close()
        assert uploaded.status == 200, profile
        avatar = fetch(port, "GET", profile["avatar"], source=source)
        assert avatar.status == 200 and avatar.body[:4] == b"RIFF"
        # The API saw the client's own address, under a request id the edge chose.
        request_id = uploaded.headers["X-Request-ID"]
        assert NGINX_REQUEST_ID.fullmatch(request_id) and request_id != SPOOFED_ID
        record = wait_for(lambda: next((r for r in api_log_records(media_node)
                                        if r.get("request_id") == request_id), None), 5,
                          what="the API access log line")
        assert record["client_ip"] == source

        # The edge's own answers: the guard's 404, an unknown path, TRACE, a body over 6 MB.
        own = [fetch(port, "GET", "/api/x/%2e%2e/y.html", source=address(82)),
               fetch(port, "GET", "/nope.js", source=address(82)),
               fetch(port, "TRACE", "/api/x", source=address(82)),
               fetch(port, "POST", "/api/x.html", source=address(82),
                     body={"blob": "x" * (7 * 1024 * 1024)})]
        assert [response.status for response in own] == [404, 404, 405, 413]
        assert own[2].headers["Allow"]
        for response in own:
            assert json.loads(response.body)["error"]["code"] in (
                "not_found", "bad_request", "payload_too_large")
            assert_nginx_answer_policy(response)

        pids = gateway.nginx_pids()
        assert len(pids) >= 2  # master, its worker, the cache manager and loader
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log.read_text()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]  # nginx went with it


class EchoServer:
    """An upstream that answers every request with the headers it received, and its name."""

    def __init__(self, host: str, port: int, name: str) -> None:
        class Echo(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                body = json.dumps({"name": name, "path": self.path,
                                   "headers": dict(self.headers.items())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Echo)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sf_edge_sets_the_client_identity_on_every_location_it_proxies(tmp_path):
    """What the API and the origins receive from `sf edge`: the client's address SET as
    X-Forwarded-For and X-Real-IP (never appended to what the client sent), its own request id,
    its own scheme, no Forwarded header; on /api/, /ws/, the probes, /media/ and all four /hls/
    locations (public and signed, playlists and segments)."""
    port, echo_port = reserve_port(), reserve_port()
    echo = EchoServer("127.0.0.1", echo_port, "echo")
    secret = "edge-identity-secret-0123456789"
    gateway = SeparateEdge(tmp_path, port, f"127.0.0.1:{echo_port}",
                           f"127.0.0.1:{echo_port}", secret)
    signed = sign_playback(4242, secret, 60)
    paths = ["/api/streams?x=1", "/ws/streams/1/viewers", "/healthz", "/readyz",
             "/media/avatars/12-abcdefgh.webp", "/media/thumbnails/12-abcdefgh.jpg",
             "/hls/4242/master.m3u8", "/hls/4242/720p/seg_00001.ts",
             signed, signed.replace("master.m3u8", "720p/seg_00002.ts")]
    source = address(90)
    try:
        for path in paths:
            response = fetch(port, "GET", path, source=source, headers={
                "X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7",
                "X-Forwarded-Proto": "https", "X-Request-ID": SPOOFED_ID,
                "Forwarded": "for=198.51.100.7"})
            assert response.status == 200, (path, response.status, response.body[:200])
            seen = {name.lower(): value for name, value in response.json()["headers"].items()}
            assert seen["x-forwarded-for"] == source, (path, seen)
            assert seen["x-real-ip"] == source, path
            assert seen["x-forwarded-proto"] == "http", path
            assert NGINX_REQUEST_ID.fullmatch(seen["x-request-id"]), path
            assert "forwarded" not in seen, path
    finally:
        gateway.stop()
        echo.stop()


def test_the_edge_follows_its_upstream_names_to_new_addresses(tmp_path, base_config):
    """`sf edge` looks SF_EDGE_API_SERVERS / SF_EDGE_MEDIA_ORIGINS up itself: it starts while a
    name is unknown (its own 502 meanwhile), and reloads when a name's address changes (a
    media pod restarted under its stable name, an API replica added to a compose service)."""
    echo_port = reserve_port()
    first, second = EchoServer("127.0.0.1", echo_port, "first"), EchoServer(
        "127.0.0.2", echo_port, "second")
    table: dict[str, list[str]] = {"api.sf.test": [], "media.sf.test": ["127.0.0.1"]}
    port = reserve_port()
    config = base_config.replace(
        var_dir=tmp_path / "var", media_dir=tmp_path / "var" / "media", http_host="127.0.0.1",
        http_port=port, edge_workers=1, edge_api_servers=(f"api.sf.test:{echo_port}",),
        edge_media_origins=(f"media.sf.test:{echo_port}",))
    gateway = nginx.Edge(config, lookup=lambda host, _: list(table[host])).start()

    def answered_by() -> str | None:
        response = fetch(port, "GET", "/api/streams")
        return response.json().get("name") if response.status == 200 else None

    try:
        unknown = fetch(port, "GET", "/api/streams")
        assert unknown.status == 502 and unknown.json()["error"]["code"] == "internal_error"
        assert fetch(port, "GET", "/media/avatars/12-abcdefgh.webp").json()["name"] == "first"
        assert gateway.refresh() is False  # nothing changed: no reload
        table["api.sf.test"] = ["127.0.0.1"]
        assert gateway.refresh() is True
        wait_for(lambda: answered_by() == "first", 10, what="the edge to reach the API name")
        table["api.sf.test"] = table["media.sf.test"] = ["127.0.0.2"]
        assert gateway.refresh() is True
        wait_for(lambda: answered_by() == "second", 10, what="the edge to follow the new address")
        assert fetch(port, "GET", "/media/avatars/12-abcdefgh.webp").json()["name"] == "second"
    finally:
        gateway.stop()
        first.stop()
        second.stop()


def test_behind_a_named_proxy_its_forwarded_for_is_believed_and_nobody_elses(base_config,
                                                                          tmp_path):
    """A media node behind the compose gateway (SF_REAL_IP_FROM): viewers keep their own
    addresses; a client that is not the named proxy cannot choose its address
    (security.md#spoofed-forwarded-for)."""
    balancer = address(60)
    node = Platform(base_config, tmp_path, SF_REAL_IP_FROM=f"{balancer}/32").start()
    try:
        via_balancer = edge(node, "GET", "/healthz", source=balancer,
                            headers={"X-Forwarded-For": "198.51.100.61"})
        direct = edge(node, "GET", "/healthz", source=address(62),
                      headers={"X-Forwarded-For": "198.51.100.63"})
        ids = {via_balancer.headers["X-Request-ID"]: "198.51.100.61",
               direct.headers["X-Request-ID"]: address(62)}
        for request_id, client in ids.items():
            wait_for(lambda r=request_id: r in nginx_log(node), 5, what="the access log line")
            line = next(line for line in nginx_log(node).splitlines() if request_id in line)
            assert line.startswith(client + " "), line
    finally:
        node.stop()


# --- security.md#nginx-answers-in-api-shape and security.md#secrets-in-nginx-logs -------------

def test_nginx_errors_are_json_and_redirects_never_name_the_clients_host(platform):
    trace = edge(platform, "TRACE", "/api/streams", source=address(70))
    assert trace.status == 405 and trace.headers["Allow"]
    assert json.loads(trace.body)["error"]["code"] == "bad_request"
    missing = edge(platform, "GET", "/hls/1/master.m3u8", source=address(70))
    assert missing.status == 404 and missing.headers["Content-Type"].startswith("application/json")
    assert json.loads(missing.body)["error"]["code"] == "not_found"
    # security.md#nginx-answers-in-api-shape: a body over nginx's limit is refused with JSON whatever
    # the path's extension says.
    too_large = edge(platform, "POST", "/api/x.html", source=address(70),
                     body={"blob": "x" * (platform.config.max_request_bytes + 1024)})
    assert too_large.status == 413
    assert too_large.headers["Content-Type"].startswith("application/json")
    assert json.loads(too_large.body)["error"]["code"] == "payload_too_large"
    # A range or precondition nginx cannot meet on a file: JSON too.
    unsatisfiable = edge(platform, "GET", "/", source=address(70),
                         headers={"Range": "bytes=99999999-"})
    precondition = edge(platform, "GET", "/", source=address(70), headers={"If-Match": '"no"'})
    assert (unsatisfiable.status, precondition.status) == (416, 412)
    # (nginx's range filter has already added the file location's headers when the 416 goes to
    # the error page: both sets are sent, the API's among them.)
    assert json.loads(unsatisfiable.body)["error"]["message"] == "HTTP 416"
    assert "no-store" in unsatisfiable.headers.get_all("Cache-Control")
    assert len(unsatisfiable.headers["X-Request-ID"]) == 32
    # nginx's own answers carry the API's policy too.
    for response in (trace, missing, too_large, precondition,
                     edge(platform, "GET", "/media/x", source=address(70))):
        assert_nginx_answer_policy(response)
    redirect = edge(platform, "GET", "/api", source=address(70), headers={"Host": "evil.example"})
    assert redirect.status == 301 and "evil" not in redirect.headers["Location"]


def test_signed_paths_and_thumbnail_names_never_reach_the_access_log(platform):
    """security.md#secrets-in-nginx-logs."""
    signed = sign_playback(424242, platform.config.internal_secret, 60)
    signature = signed.split("/")[3]
    thumbnail = "/media/thumbnails/424242-AbCdEfGhIjKlMnOp.jpg"
    for path in (signed, thumbnail):
        edge(platform, "GET", path, source=address(71))
    wait_for(lambda: "/hls/424242/[signed]/master.m3u8" in nginx_log(platform), 5,
             what="the masked line")
    logs = nginx_log(platform) + (platform.config.var_dir / "log" / "nginx-error.log").read_text()
    assert signature not in logs and "AbCdEfGhIjKlMnOp" not in logs


def test_failed_authentications_count_against_the_address(base_config, tmp_path):
    node = Platform(base_config, tmp_path, SF_RATE_LIMIT_ANONYMOUS="5").start()
    try:
        statuses = [edge(node, "GET", "/api/users/profile", source=address(72),
                         headers={"Authorization": "Bearer x.y.z"}) for _ in range(7)]
        assert [r.status for r in statuses] == [401] * 5 + [429] * 2
        assert statuses[0].headers["X-RateLimit-Limit"] == "5"
        assert edge(node, "GET", "/api/categories", source=address(73)).status == 200
    finally:
        node.stop()
