"""Without Redis: the degraded modes of docs/operations.md#without-redis-degraded-modes, pinned
on a real node whose Redis is killed (SIGKILL) under it and started again.

What keeps working answers as usual through the node's public port (nginx): anonymous reads
from PostgreSQL, HLS, a publish going live, open viewer sockets. What needs Redis fails closed
with 503, Retry-After and the API's error shape (never 500 or 401), and works again once Redis
is back, without restarting anything."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from harness.client import PASSWORD, connect, privacy_policy_version
from harness.platform import Platform, hls_ready, redis_up, wait_for
from harness.ports import reserve_port
from sf.db.migrate import drop_database, recreate_database

pytestmark = pytest.mark.platform

OUTAGE_SECONDS = 12  # at least this long with Redis down while sockets are watched


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A Redis of the test's own, persisting every write (sessions survive the SIGKILL)."""
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: redis_up(port), 10, what="redis-server")
    return process


def assert_unavailable(answer: tuple[int, Any, dict[str, str]], what: str) -> None:
    """503 with Retry-After and the API's error shape: not a 500, not a 401."""
    status, body, headers = answer
    assert status == 503, (what, status, body)
    assert body["error"]["code"] == "internal_error", (what, body)
    assert "retry shortly" in body["error"]["message"], (what, body)
    assert int(headers["Retry-After"]) > 0, (what, headers)


def test_without_redis_reads_hls_publishes_and_open_sockets_go_on(base_config, tmp_path):
    port = reserve_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = start_redis(port, redis_dir)
    # Its own database: no other node's totals or streams in the lists checked here.
    database = f"sf_redis_outage_{uuid.uuid4().hex[:8]}"
    database_url = asyncio.run(recreate_database(base_config.database_url, database))
    node = Platform(base_config, tmp_path / "node", SF_API_PROCESSES="1",
                    SF_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                    SF_DATABASE_URL=database_url)
    try:
        node.start()
        streamer, fan, latecomer = (node.register(name) for name in
                                    ("outlasting", "outlastfan", "outlatecomer"))
        assert node.request("POST", "/api/users/outlasting/follow", token=fan["token"])[0] == 204
        status, signed_in, _ = node.request("POST", "/api/auth/login",
                                            {"username": "outlastfan", "password": PASSWORD})
        assert status == 200
        policy = privacy_policy_version(node.base_url)
        node.publish(streamer["key"], seconds=120)
        stream_id = wait_for(lambda: node.live_stream_of("outlasting"), 20, what="live")["id"]
        wait_for(lambda: hls_ready(node, stream_id), 30, what="the HLS ladder")
        tickets = [node.request("POST", "/api/ws/ticket", token=fan["token"])[1]["ticket"]
                   for _ in range(2)]
        variant = next(line for line in node.get(f"/hls/{stream_id}/master.m3u8")[1]
                       .decode().splitlines() if line.endswith(".m3u8"))

        def get(path: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
            return node.request("GET", path, token=token)

        async def scenario() -> None:
            nonlocal server
            anonymous = await connect(node.base_url, stream_id, socket="live")
            signed = await connect(node.base_url, stream_id, socket="live",
                                   query=f"?ticket={tickets[0]}")
            for socket in (anonymous, signed):
                await socket.until(lambda v: v.viewers() == 2, what="both viewers counted")

            server.send_signal(signal.SIGKILL)
            server.wait()
            killed = time.monotonic()
            log_lines_before = len(node.api_log.read_text().splitlines())

            # Anonymous reads: 200 from PostgreSQL (the cache falls through).
            for path in ("/api/streams", "/api/streams?q=outlasting", f"/api/streams/{stream_id}",
                         "/api/users/outlasting", "/api/users/outlasting/streams",
                         "/api/users/outlasting/followers", "/api/users/outlastfan/following",
                         "/api/categories", f"/api/streams/{stream_id}/chat/messages",
                         "/api/legal/privacy-policy"):
                status, body, _ = await asyncio.to_thread(get, path)
                assert status == 200, (path, status, body)
            listing = (await asyncio.to_thread(get, "/api/streams"))[1]
            assert [s["id"] for s in listing["data"] if s["is_live"]] == [stream_id]
            followers = (await asyncio.to_thread(get, "/api/users/outlasting/followers"))[1]
            assert [f["username"] for f in followers["data"]] == ["outlastfan"]
            # Readiness: degraded, still in rotation (the edge and Kubernetes keep sending).
            status, body, _ = await asyncio.to_thread(get, "/readyz")
            assert status == 200 and body["status"] == "degraded", body
            assert body["checks"]["redis"].startswith("error"), body

            # Signed-in requests and everything that needs a session or its limits: 503.
            # A token can still be presented, but its revocation cannot be checked.
            assert_unavailable(await asyncio.to_thread(get, "/api/users/profile", fan["token"]),
                               "a signed-in read")
            assert_unavailable(await asyncio.to_thread(get, f"/api/streams/{stream_id}",
                                                       fan["token"]), "an optional-auth read")
            for what, path, body, token in (
                    ("a ticket", "/api/ws/ticket", None, fan["token"]),
                    ("logout", "/api/auth/logout", None, fan["token"]),
                    ("refresh", "/api/auth/refresh-token",
                     {"refresh_token": signed_in["refresh_token"]}, None),
                    ("login", "/api/auth/login",
                     {"username": "outlastfan", "password": PASSWORD}, None),
                    ("register", "/api/auth/register",
                     {"username": "outlastnew", "email": "outlastnew@example.com",
                      "password": PASSWORD, "accept_privacy_policy": policy}, None),
                    ("a reset mail", "/api/auth/password-reset",
                     {"email": "outlastfan@example.com"}, None)):
                answer = await asyncio.to_thread(node.request, "POST", path, body, token)
                assert_unavailable(answer, what)
            # A socket signing in with a ticket cannot redeem it: refused at the handshake.
            try:
                refused = await connect(node.base_url, stream_id, query=f"?ticket={tickets[1]}")
            except tornado.httpclient.HTTPClientError as error:
                assert error.code == 503, error
            else:
                refused.close()
                raise AssertionError("a ticket was redeemed without Redis")
            # Chat sends are refused (no limit could be counted), the socket stays open.
            notice = await signed.say("still here?")
            assert notice["type"] == "chat.notice" and notice["code"] == "unavailable", notice

            # A new anonymous viewer joins; open sockets get this process's own count.
            newcomer = await connect(node.base_url, stream_id)
            for socket in (anonymous, signed, newcomer):
                await socket.until(lambda v: v.viewers() == 3, what="the local count")

            # A streamer goes live: on_publish needs PostgreSQL only.
            node.publish(latecomer["key"], seconds=120)
            late = await asyncio.to_thread(wait_for, lambda: node.live_stream_of("outlatecomer"),
                                           20, 0.2, "a go-live without Redis")
            await asyncio.to_thread(wait_for, lambda: hls_ready(node, late["id"], 1), 30, 0.2,
                                    "the new stream's HLS")

            # HLS of the first stream keeps advancing, its segments served.
            first = await asyncio.to_thread(node.media_sequence, f"/hls/{stream_id}/{variant}")
            assert first is not None
            frames_at = {id(s): len(s.frame_times) for s in (anonymous, signed)}
            watched = time.monotonic()  # a few segments' time at least, however late it is
            while time.monotonic() - killed < OUTAGE_SECONDS or time.monotonic() - watched < 3:
                await asyncio.sleep(0.5)
            status, playlist, _ = await asyncio.to_thread(node.get, f"/hls/{stream_id}/{variant}")
            assert status == 200
            later = int(next(line for line in playlist.decode().splitlines()
                             if line.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
            assert later > first, (first, later)
            segment = [line for line in playlist.decode().splitlines()
                       if line and not line.startswith("#")][-1]
            rung = variant.rsplit("/", 1)[0]
            status, data, _ = await asyncio.to_thread(node.get, f"/hls/{stream_id}/{rung}/{segment}")
            assert status == 200 and len(data) > 1000, (status, len(data))

            # The open sockets, anonymous and signed in, are still open and still fed (stream
            # messages with new thumbnails, from this process).
            for socket in (anonymous, signed, newcomer):
                assert not socket.closed.is_set() and socket.close_code is None
            for socket in (anonymous, signed):
                assert len(socket.frame_times) > frames_at[id(socket)], socket.messages[-3:]
            # No ERROR logged meanwhile but the access log's 503s (one WARNING per outage and
            # component is the rule; transcoder health kept logging one every 2 s per stream).
            outage_lines = node.api_log.read_text().splitlines()[log_lines_before:]
            errors = [line for line in outage_lines if '"level": "ERROR"' in line
                      and '"logger": "sf.access"' not in line]
            assert not errors, errors[:3]
            assert not [line for line in outage_lines if '"status": 500' in line]

            # Redis back: signed-in requests work again with the same token, no restart.
            server = await asyncio.to_thread(start_redis, port, redis_dir)
            await asyncio.to_thread(
                wait_for, lambda: get("/api/users/profile", fan["token"])[0] == 200, 15, 0.2,
                "signed-in requests again")
            assert node.request("POST", "/api/ws/ticket", token=fan["token"])[0] == 200
            # The refused sign-up left nothing behind: the name is free.
            status, _, _ = await asyncio.to_thread(
                node.request, "POST", "/api/auth/register",
                {"username": "outlastnew", "email": "outlastnew@example.com",
                 "password": PASSWORD, "accept_privacy_policy": policy})
            assert status == 201
            status, _, _ = await asyncio.to_thread(
                node.request, "POST", "/api/auth/login",
                {"username": "outlastfan", "password": PASSWORD})
            assert status == 200
            answer = await signed.say("back again")
            assert answer["type"] == "chat.ack", answer
            for socket in (anonymous, signed, newcomer):
                assert socket.close_code is None
                socket.close()

        asyncio.run(scenario())
    finally:
        node.stop()
        server.kill()
        server.wait()
        asyncio.run(drop_database(base_config.database_url, database))
