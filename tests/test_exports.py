"""Personal data exports (issue 21): what the archive holds, built off the request path; one in
progress per user and a few a day; the signed link is the owner's alone and dies with the
export; stale and expired exports are cleaned up by the scheduled jobs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from harness import client
from harness.platform import Platform
from sf.db import exports as exports_db
from sf.services.exports import PAGE_ROWS, ExportArchive
from sf.services.jobs import ROUND_DONE_KEY
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=90)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


async def _ready_export(api: Any, token: str) -> dict[str, Any]:
    """Request an export and wait until the list shows it ready."""
    created = await api.post("/api/users/profile/exports", token=token)
    assert created.status == 202, created
    assert created.json["status"] == "pending" and set(created.json) == {"id", "status"}
    return await _wait_ready(api, token, created.json["id"])


async def _wait_ready(api: Any, token: str, export_id: int) -> dict[str, Any]:
    for _ in range(200):
        listed = await api.get("/api/users/profile/exports", token=token)
        assert listed.status == 200, listed
        mine = [item for item in listed.json["data"] if item["id"] == export_id]
        assert mine, listed.json
        if mine[0]["status"] != "pending":
            assert mine[0]["status"] == "ready", mine[0]
            return mine[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the export never became ready")


def _archive(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def test_the_archive_holds_the_owners_data(api, services):
    alice = await api.register("alice")
    bob = await api.register("bob")
    carol = await api.register("carol")
    token = alice["access_token"]
    login = await api.post("/api/auth/login", {"username": "alice", "password": "password123"},
                           headers={"User-Agent": "Firefox/128 " + "x" * 600})
    assert login.status == 200
    avatar = await api.put("/api/users/profile/avatar", token=token, body=_png(),
                           headers={"Content-Type": "image/png"})
    assert avatar.status == 200
    await api.put("/api/users/profile", {"bio": "hello there"}, token=token)
    stream_id = await go_live(api, services, alice)
    await api.post("/api/users/bob/follow", token=token)
    await api.post("/api/users/alice/follow", token=bob["access_token"])
    await api.put("/api/stream/allowed-viewers/carol", token=token)
    await api.put("/api/stream/allowed-viewers/alice", token=carol["access_token"])
    await api.put("/api/notifications/mutes/bob", token=token)
    await api.put("/api/notifications/settings", {"stream.online": {"email": True}}, token=token)
    await services.notifications.tell(alice["user"]["id"], "webhook.disabled", {"webhook_id": 7})

    ready = await _ready_export(api, token)
    assert set(ready) == {"id", "status", "created_at", "expires_at", "download_url"}
    download = await api.get(ready["download_url"])
    assert download.status == 200
    assert download.headers["Content-Type"] == "application/zip"
    assert download.headers["Content-Disposition"] == \
        f'attachment; filename="sf-export-{ready["id"]}.zip"'
    assert "no-store" in download.headers["Cache-Control"]
    files = _archive(download.body)
    assert set(files) == {"profile.json", "consents.json", "streams.json", "following.json",
                          "followers.json", "invites.json", "sessions.json", "avatar.webp",
                          "notifications.json", "notification_settings.json",
                          "notification_mutes.json", "push_subscriptions.json"}
    profile = json.loads(files["profile.json"])
    assert profile["username"] == "alice" and profile["email"] == "alice@example.com"
    assert profile["bio"] == "hello there"
    assert profile["created_at"].endswith("Z")  # ISO 8601 UTC with Z, as the API writes
    assert "password_hash" not in profile
    consents = json.loads(files["consents.json"])
    assert [(c["purpose"], c["version"]) for c in consents] == \
        [("privacy_policy", await api.privacy_policy_version())]
    streams = json.loads(files["streams.json"])
    assert [s["id"] for s in streams] == [stream_id]
    assert {"peak_viewers", "average_viewers", "unique_viewers", "watch_time_seconds",
            "followers_gained"} <= set(streams[0])
    assert [f["username"] for f in json.loads(files["following.json"])] == ["bob"]
    assert [f["username"] for f in json.loads(files["followers.json"])] == ["bob"]
    invites = json.loads(files["invites.json"])
    assert [(i["direction"], i["username"]) for i in invites] == [("given", "carol"),
                                                                 ("received", "carol")]
    sessions = json.loads(files["sessions.json"])
    assert [s["kind"] for s in sessions] == ["register", "login"]
    assert all(s["ip"] == "127.0.0.1" for s in sessions)
    assert sessions[1]["user_agent"].startswith("Firefox/128 ")
    assert len(sessions[1]["user_agent"]) == 512
    notices = json.loads(files["notifications.json"])
    assert [(n["type"], n["data"], n["read_at"]) for n in notices] == \
        [("webhook.disabled", {"webhook_id": 7}, None)]
    assert [(s["type"], s["in_app"], s["email"], s["push"])
            for s in json.loads(files["notification_settings.json"])] == \
        [("stream.online", True, True, True)]
    assert [m["username"] for m in json.loads(files["notification_mutes.json"])] == ["bob"]
    assert json.loads(files["push_subscriptions.json"]) == []
    stored = services.config.media_dir / "avatars" / Path(avatar.json["avatar"]).name
    assert files["avatar.webp"] == stored.read_bytes()
    # Nothing of other users beyond the relations: bob's e-mail is nowhere.
    assert not any(b"bob@example.com" in content for content in files.values())


async def test_sign_ins_keep_login_records(api, services):
    tokens = await api.register("dora")
    await api.post("/api/auth/login", {"email": "dora@example.com", "password": "password123"},
                   headers={"User-Agent": "Mozilla/5.0 (X11) test"})
    failed = await api.post("/api/auth/login", {"username": "dora", "password": "wrong-one"})
    assert failed.status == 401
    rows = await services.db.fetch(
        "SELECT session_id, kind, host(ip) AS ip, user_agent FROM login_records ORDER BY id")
    assert [row["kind"] for row in rows] == ["register", "login"]  # a failure is no sign-in
    assert all(row["ip"] == "127.0.0.1" for row in rows)
    assert rows[1]["user_agent"] == "Mozilla/5.0 (X11) test"
    claims = services.tokens.verify(tokens["access_token"], "access")
    assert rows[0]["session_id"] == claims.session_id


async def test_sections_are_read_a_page_at_a_time(api, services, monkeypatch):
    """More rows than one page arrive whole, handed to the export thread a page at a time
    (memory holds one page, whatever the account's size), never written on the loop."""
    pages: list[tuple[int, str]] = []
    write_items = ExportArchive.write_items

    def recording(archive: ExportArchive, items: list[dict[str, Any]]) -> None:
        pages.append((len(items), threading.current_thread().name))
        write_items(archive, items)

    monkeypatch.setattr(ExportArchive, "write_items", recording)
    tokens = await api.register("erin")
    user_id = (await api.get("/api/users/profile", token=tokens["access_token"])).json["id"]
    await services.db.execute(
        "INSERT INTO login_records (user_id, session_id, kind, ip, user_agent)"
        " SELECT $1, 's' || n, 'login', '198.51.100.7', 'agent ' || n"
        " FROM generate_series(1, 1234) n", user_id)
    ready = await _ready_export(api, tokens["access_token"])
    sessions = json.loads(_archive((await api.get(ready["download_url"])).body)["sessions.json"])
    assert len(sessions) == 1235
    assert [s["user_agent"] for s in sessions[1:]] == [f"agent {n}" for n in range(1, 1235)]
    assert max(size for size, _ in pages) == PAGE_ROWS
    assert all(thread.startswith("sf-export") for _, thread in pages)


async def test_one_export_at_a_time_then_a_few_a_day(api, services):
    """security.md#export-flood: one export in progress per user, and a few a day."""
    tokens = await api.register("fred")
    token = tokens["access_token"]
    async with services.exports._turn:  # another build is running here: this one stays pending
        first, second = await asyncio.gather(
            api.post("/api/users/profile/exports", token=token),
            api.post("/api/users/profile/exports", token=token))
        assert sorted([first.status, second.status]) == [202, 409], (first, second)
        again = await api.post("/api/users/profile/exports", token=token)
        assert again.status == 409 and again.json["error"]["code"] == "conflict"
    accepted = first if first.status == 202 else second
    await _wait_ready(api, token, accepted.json["id"])
    for _ in range(services.config.exports_per_day - 1):
        await _ready_export(api, token)
    refused = await api.post("/api/users/profile/exports", token=token)
    assert refused.status == 429 and refused.json["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    assert (await api.post("/api/users/profile/exports")).status == 401
    listed = (await api.get("/api/users/profile/exports?limit=2", token=token)).json
    assert len(listed["data"]) == 2 and listed["pagination"]["next_cursor"]
    rest = (await api.get("/api/users/profile/exports?limit=2&cursor="
                          + listed["pagination"]["next_cursor"], token=token)).json
    assert len(rest["data"]) == services.config.exports_per_day - 2


async def test_an_export_link_is_its_owners_alone(api, services):
    """security.md#export-link-forgery: another user's export, a forged, altered, re-dated or
    expired signature, or a guessed id never gets a byte of the archive."""
    alice = await api.register("alice")
    mallory = await api.register("mallory")
    ready = await _ready_export(api, alice["access_token"])
    mine = await _ready_export(api, mallory["access_token"])
    # Mallory's list shows only her own export.
    listed = (await api.get("/api/users/profile/exports", token=mallory["access_token"])).json
    assert [item["id"] for item in listed["data"]] == [mine["id"]]
    export_id = ready["id"]
    row = await exports_db.get(services.db, export_id)
    assert row is not None and row.expires_at is not None
    expires = int(row.expires_at.timestamp())
    signer = services.exports.signer
    mallory_id = (await api.get("/api/users/profile", token=mallory["access_token"])).json["id"]
    good = signer.signature(export_id, row.user_id, expires)
    base = f"/api/v1/users/profile/exports/{export_id}/download"
    attempts = {
        # her own valid link's signature on alice's export id
        "own signature, other id": f"{base}?{mine['download_url'].split('?')[1]}",
        # a signature made for her user id over alice's export
        "signed for another user": f"{base}?expires={expires}&signature="
                                   + signer.signature(export_id, mallory_id, expires),
        "altered signature": f"{base}?expires={expires}&signature="
                             + ("A" if good[0] != "A" else "B") + good[1:],
        "later expiry": f"{base}?expires={expires + 3600}&signature=" + good,
        "guessed id": f"/api/v1/users/profile/exports/{export_id + 100}/download"
                      f"?expires={expires}&signature=" + good,
    }
    for what, url in attempts.items():
        response = await api.get(url, token=mallory["access_token"])
        assert response.status == 404, (what, response)
        assert response.headers["Content-Type"].startswith("application/json"), what
        assert b"PK" not in response.body[:4], what
    past = int(time.time()) - 10
    expired = await api.get(f"{base}?expires={past}&signature="
                            + signer.signature(export_id, row.user_id, past))
    assert expired.status == 403 and b"PK" not in expired.body[:4]
    for query in ("", "?expires=1", f"?expires={expires}&signature=short",
                  f"?expires={expires}&signature={good}&extra=1"):
        assert (await api.get(base + query)).status == 422, query
    # The owner's link, with no token at all (a browser download), works.
    assert (await api.get(ready["download_url"])).status == 200
    # Not once the owner deleted the account, even within the grace period.
    deleted = await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                                token=alice["access_token"])
    assert deleted.status == 202
    gone = await api.get(ready["download_url"])
    assert gone.status == 404 and b"PK" not in gone.body[:4]


async def test_expired_exports_are_deleted_file_and_row(api, services):
    tokens = await api.register("gina")
    ready = await _ready_export(api, tokens["access_token"])
    row = await exports_db.get(services.db, ready["id"])
    assert row is not None and row.file is not None
    path = services.exports.dir / row.file
    assert path.is_file()
    report = await services.jobs.run_round()
    assert report is not None and report["expired_exports"]["deleted"] == 0
    assert path.is_file()
    await services.db.execute(
        "UPDATE exports SET expires_at = now() - interval '1 second' WHERE id = $1", row.id)
    report = await services.jobs.run_round()
    assert report is not None and report["expired_exports"]["deleted"] == 1
    assert not path.exists()
    assert await exports_db.get(services.db, row.id) is None
    assert (await api.get(ready["download_url"])).status == 404
    listed = (await api.get("/api/users/profile/exports", token=tokens["access_token"])).json
    assert listed["data"] == []


async def test_an_erased_accounts_exports_go_with_their_files(api, services):
    tokens = await api.register("ivan")
    ready = await _ready_export(api, tokens["access_token"])
    row = await exports_db.get(services.db, ready["id"])
    assert row is not None and row.file is not None
    assert (services.exports.dir / row.file).is_file()
    assert await services.exports.delete_for_user(row.user_id) == 1
    assert not (services.exports.dir / row.file).exists()
    assert await exports_db.get(services.db, ready["id"]) is None
    assert (await api.get(ready["download_url"])).status == 404


async def test_a_build_that_died_is_marked_failed_not_pending_forever(api, services):
    tokens = await api.register("hugo")
    user_id = (await api.get("/api/users/profile", token=tokens["access_token"])).json["id"]
    # What a node that died mid-build leaves: a pending row and a partial file.
    stale_id = await services.db.fetchval(
        "INSERT INTO exports (user_id, created_at) VALUES ($1, now() - interval '2 hours')"
        " RETURNING id", user_id)
    services.exports.dir.mkdir(parents=True, exist_ok=True)
    partial = services.exports.dir / f".{stale_id}-abcdefghijklmnopqrstuv.zip.part"
    partial.write_bytes(b"half a zip")
    old = time.time() - 7200
    os.utime(partial, (old, old))
    blocked = await api.post("/api/users/profile/exports", token=tokens["access_token"])
    assert blocked.status == 409
    report = await services.jobs.run_round()
    assert report is not None and report["stale_exports"] == {"failed": 1}
    assert report["expired_exports"]["stray_files_removed"] == 1
    assert not partial.exists()
    listed = (await api.get("/api/users/profile/exports", token=tokens["access_token"])).json
    assert [(item["status"], "download_url" in item) for item in listed["data"]] == \
        [("failed", False)]
    await _ready_export(api, tokens["access_token"])  # a new one is possible again


async def test_a_node_stopping_mid_build_marks_its_export_failed(api, services):
    tokens = await api.register("iris")
    user_id = (await api.get("/api/users/profile", token=tokens["access_token"])).json["id"]
    async with services.exports._turn:  # a build already running here: the next one waits
        created = await api.post("/api/users/profile/exports", token=tokens["access_token"])
        assert created.status == 202
        await services.exports.stop()
    status = await services.db.fetchval("SELECT status FROM exports WHERE user_id = $1", user_id)
    assert status == "failed"


@pytest.mark.platform
def test_through_the_edge_a_download_passes_and_logs_hold_no_raw_address(base_config, tmp_path):
    """A real node behind its edge nginx (`/api/` → the API): the owner's link downloads the
    archive whole; with SF_LOG_IP_MODE=truncate neither nginx nor the API logs 127.0.0.1."""
    node = Platform(base_config, tmp_path, SF_LOG_IP_MODE="truncate",
                    SF_JOBS_INTERVAL_SECONDS="1")
    with redis.Redis.from_url(node.config.redis_url) as shared:
        shared.delete(ROUND_DONE_KEY)  # an earlier platform's round on this Redis database
    node.start()
    try:
        tokens = client.register(node.base_url, "edgeowner")
        status, created = client.call(node.base_url, "POST", "/api/users/profile/exports",
                                      token=tokens["access_token"])
        assert status == 202, created
        deadline = time.monotonic() + 30
        while True:
            status, listed = client.call(node.base_url, "GET", "/api/users/profile/exports",
                                         token=tokens["access_token"])
            assert status == 200, listed
            if listed["data"][0]["status"] == "ready" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        url = listed["data"][0]["download_url"]
        status, body = client.http(node.base_url + url)
        assert status == 200
        files = _archive(body)
        assert json.loads(files["profile.json"])["username"] == "edgeowner"
        status, body = client.http(node.base_url + url.replace("signature=", "signature=x")[:-1])
        assert status == 404 and not body.startswith(b"PK")
        time.sleep(1.5)  # nginx writes its access log buffered, at most a second late
    finally:
        node.stop()
    edge_log = (node.config.var_dir / "log" / "edge-access.log").read_text()
    api_log = node.api_log.read_text()
    assert "/api/users/profile/exports" in edge_log and "127.0.0.0/24" in edge_log
    assert "127.0.0.1" not in edge_log
    assert '"client_ip": "127.0.0.0/24"' in api_log and '"client_ip": "127.0.0.1"' not in api_log
    assert "signature=" not in edge_log and "signature=" not in api_log
    # The node's job runner ran a round at start-up (one of its two processes), cleanly.
    jobs_lines = [json.loads(line) for line in api_log.splitlines()
                  if line.startswith("{") and '"sf.jobs"' in line]
    assert {line.get("job") for line in jobs_lines} >= {"ip_retention", "expired_exports"}
    assert all(line["level"] == "INFO" for line in jobs_lines)
