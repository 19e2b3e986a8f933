"""The public edge's HLS cache, attacked and measured from outside (issue 19, point 2).

A real node (nginx-rtmp, FFmpeg, API) behind the edge nginx that `make run` starts; every
request goes to the public port, and the origin (the node's own nginx) is watched through its
access log and its files on disk.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import socket
import threading
import time
from typing import Any

import pytest

from harness.platform import Platform, wait_for
from sf.media.hls import sign_playback

pytestmark = pytest.mark.platform

SOURCE = f"127.{os.getpid() % 200 + 20}.{secrets.randbelow(250) + 1}"


def fetch(platform: Platform, path: str, headers: dict[str, str] | None = None,
          source: str = "127.0.0.1") -> tuple[int, bytes, dict[str, str]]:
    """GET through the public port, the path sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", platform.config.http_port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.headers)
    finally:
        conn.close()


def segments(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if line.endswith(".ts")]


def media_sequence(body: bytes) -> int:
    for line in body.decode().splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no media sequence in {body[:200]!r}")


def origin_log(platform: Platform) -> list[str]:
    time.sleep(1.3)  # the origin's access log is flushed every second
    path = platform.config.var_dir / "log" / "nginx-access.log"
    return path.read_text(errors="replace").splitlines()


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("hls-edge")).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def live(platform) -> dict[str, Any]:
    """A public and a private live stream (360p: one rung each)."""
    public = platform.register("edgepublic")
    owner = platform.register("edgeprivate")
    platform.request("PUT", "/api/stream/settings", {"is_private": True}, token=owner["token"])
    platform.publish(public["key"], seconds=300)
    platform.publish(owner["key"], seconds=300)
    public_id = wait_for(lambda: platform.live_stream_of("edgepublic"), 25, what="live")["id"]
    private_id = wait_for(lambda: platform.request(
        "GET", "/api/users/edgeprivate/streams", token=owner["token"])[1]["data"], 25,
        what="the private stream")[0]["id"]
    wait_for(lambda: len(segments(fetch(platform, f"/hls/{public_id}/360p/index.m3u8")[1])) >= 3
             if fetch(platform, f"/hls/{public_id}/360p/index.m3u8")[0] == 200 else False,
             40, what="public segments")
    return {"public": public_id, "private": private_id, "owner": owner}


def signed_base(platform: Platform, stream_id: int, token: str) -> str:
    stream = platform.stream(stream_id, token=token)
    return stream["playback"]["hls"].removesuffix("/master.m3u8")


def test_a_new_segment_reaches_the_origin_once_however_many_ask(platform, live):
    sid = live["public"]
    playlist = f"/hls/{sid}/360p/index.m3u8"
    seen = set(segments(fetch(platform, playlist)[1]))
    new = wait_for(lambda: [s for s in segments(fetch(platform, playlist)[1]) if s not in seen],
                   10, interval=0.05, what="a new segment")[-1]
    results: list[tuple[int, bytes, dict[str, str]]] = []

    def viewer(index: int) -> None:
        # Query strings and Host headers a client may vary are not part of the cache key.
        results.append(fetch(platform, f"/hls/{sid}/360p/{new}?v={index}",
                             headers={"Host": f"h{index}.example"}))

    threads = [threading.Thread(target=viewer, args=(i,)) for i in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _, _ in results] == [200] * 60
    assert len({body for _, body, _ in results}) == 1 and len(results[0][1]) > 1000
    fetched = [line for line in origin_log(platform)
               if f"/hls/{sid}/360p/{new}" in line and '" 200 ' in line]
    assert len(fetched) == 1, fetched
    # A second later it is still served from the edge (the origin only confirms it: 304).
    time.sleep(1.1)
    status, body, headers = fetch(platform, f"/hls/{sid}/360p/{new}?again=1")
    assert (status, body) == (200, results[0][1])
    assert headers["X-Cache"] in ("HIT", "REVALIDATED")


def test_the_edge_playlist_is_never_more_than_half_a_second_behind_the_origin(platform, live):
    sid = live["public"]
    on_disk = platform.config.media_dir / "hls" / str(sid) / "360p" / "index.m3u8"
    origin: list[tuple[float, int]] = []
    lags = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            origin.append((time.monotonic(), media_sequence(on_disk.read_bytes())))
        except (OSError, AssertionError):
            pass  # between FFmpeg's rename steps
        now = time.monotonic()
        edge_sequence = media_sequence(fetch(platform, f"/hls/{sid}/360p/index.m3u8")[1])
        older = [seq for when, seq in origin if when <= now - 0.65]
        if older:
            lags.append(max(older) - edge_sequence)
        time.sleep(0.05)
    assert len(lags) > 40
    assert max(lags) <= 0, f"the edge served a playlist older than 0.65 s: {lags}"


def test_a_private_stream_is_served_only_signed_and_never_from_another_key(platform, live):
    sid, other = live["private"], live["public"]
    base = signed_base(platform, sid, live["owner"]["token"])
    wait_for(lambda: fetch(platform, f"{base}/360p/index.m3u8")[0] == 200, 20,
             what="the signed playlist")
    body = fetch(platform, f"{base}/360p/index.m3u8")[1]
    segment = segments(body)[-1]
    assert fetch(platform, f"{base}/360p/{segment}")[0] == 200
    status, _, headers = fetch(platform, f"{base}/360p/{segment}")
    assert headers["X-Cache"] == "HIT"
    # No shared cache beyond the edge may keep it (security.md#signed-segment-in-shared-cache: it was
    # `public, max-age=86400`, and a CDN would have served it after the signature expired).
    assert headers["Cache-Control"].startswith("private")
    # Cached under its signed path, it is still nobody's without a valid signature.
    for path in (f"/hls/{sid}/360p/{segment}", f"/hls/{sid}/360p/index.m3u8",
                 f"/hls/{sid}/master.m3u8", f"/hls/{sid}/360p/{segment}?{base}"):
        assert fetch(platform, path)[0] == 404, path
    prefix = base.rsplit("/", 1)[1]
    expires, signature = prefix.split("-", 1)
    forged = base64.urlsafe_b64encode(bytes(16)).decode().rstrip("=")
    assert fetch(platform, f"/hls/{sid}/{expires}-{forged}/360p/{segment}")[0] == 403
    # A signature of another stream does not open this one (it signs the stream id).
    public_signed = sign_playback(other, platform.config.internal_secret, 60)
    other_prefix = public_signed.split("/")[3]
    assert fetch(platform, f"/hls/{sid}/{other_prefix}/360p/{segment}")[0] == 403
    expired = sign_playback(sid, platform.config.internal_secret, -10).split("/")[3]
    assert fetch(platform, f"/hls/{sid}/{expired}/360p/{segment}")[0] == 410
    assert fetch(platform, f"/hls/{sid}/{expired}/360p/index.m3u8")[0] == 410


def test_a_public_stream_made_private_closes_its_cached_files_within_a_second(platform, live):
    sid = live["public"]
    owner_token = platform.request("POST", "/api/auth/login", {
        "username": "edgepublic", "password": "password123"})[1]["access_token"]
    body = fetch(platform, f"/hls/{sid}/360p/index.m3u8")[1]
    segment = segments(body)[-1]
    assert fetch(platform, f"/hls/{sid}/360p/{segment}")[0] == 200  # now in the edge's cache
    try:
        assert platform.request("PUT", f"/api/streams/{sid}", {"is_private": True},
                                token=owner_token)[0] == 200
        changed = time.monotonic()
        wait_for(lambda: all(fetch(platform, path)[0] == 404 for path in (
            f"/hls/{sid}/360p/{segment}", f"/hls/{sid}/360p/index.m3u8")), 3, interval=0.05,
            what="the unsigned path to close")
        assert time.monotonic() - changed < 2.0
    finally:
        platform.request("PUT", f"/api/streams/{sid}", {"is_private": False}, token=owner_token)
    wait_for(lambda: fetch(platform, f"/hls/{sid}/360p/index.m3u8")[0] == 200, 3,
             what="the public path to reopen")


def handshake(platform: Platform, stream_id: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", platform.config.http_port), timeout=5,
                                    source_address=(source, 0))
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    sock.sendall((f"GET /ws/streams/{stream_id}/viewers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: http://127.0.0.1:{platform.config.http_port}\r\n\r\n").encode())
    return sock


def status_of(sock: socket.socket) -> int:
    line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(line.split()[1])


def test_a_handshake_flood_from_one_address_is_refused_at_the_edge(platform, live):
    """security.md#websocket-handshake-flood, at the edge."""
    sid = live["public"]
    flood = [handshake(platform, sid, f"{SOURCE}.7") for _ in range(120)]
    try:
        statuses = [status_of(sock) for sock in flood]
        assert statuses.count(429) >= 60, statuses
        assert set(statuses) <= {101, 429}
        # Another address is not affected.
        bystander = handshake(platform, sid, f"{SOURCE}.8")
        assert status_of(bystander) == 101
        bystander.close()
    finally:
        for sock in flood:
            sock.close()


def test_a_cache_busting_flood_from_one_address_is_refused_at_the_edge(platform, live):
    """security.md#hls-cache-busting-flood: made-up segment names and stream ids, each a miss that
    reached the origins, at 18,700 requests/s from one address."""
    sid = live["public"]
    flood = f"{SOURCE}.9"
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", platform.config.http_port, timeout=10,
                                      source_address=(flood, 0))
    try:
        for index in range(900):
            conn.request("GET", f"/hls/{sid}/360p/seg_bust_{index}.ts")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    assert statuses.count(429) >= 300, statuses.count(429)
    assert set(statuses) <= {404, 429}
    origin_misses = [line for line in origin_log(platform) if "seg_bust_" in line]
    assert len(origin_misses) <= 600
    # A viewer elsewhere still plays.
    assert fetch(platform, f"/hls/{sid}/360p/index.m3u8", source=f"{SOURCE}.10")[0] == 200
