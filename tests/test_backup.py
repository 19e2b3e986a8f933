"""Backups for real: `sf backup` / `sf restore` as subprocesses against a database of this module's
own (every table's rows compared), retention, a damaged dump refused, the password kept out of
arguments and output, the freshness metric, sessions surviving a crash of a Redis started with
the configuration sf renders, and point-in-time recovery with PostgreSQL's own tools. Archives
are encrypted: a tampered, truncated or wrong-key archive is refused before the database is
touched, and every run leaves an audit line."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing

from harness.ports import reserve_port
from sf.app import make_app
from sf.config import Config
from sf.db.backups import backup_time, file_sha256
from sf.node.localservices import LocalRedis, port_open, postgres_program
from sf.ops.backup import Target
from sf.security import BackupCipher, BackupDecryptionError
from sf.services.container import start_services
from tests.conftest import Api
from tests.helpers import go_live, main_and_empty_databases, set_viewers

SF = str(Path(sys.executable).parent / "sf")
REDIS_PORT = reserve_port()
PITR_PORT = reserve_port()


# --- fixtures: this module's own databases ----------------------------------------------------

def without_password(url: str) -> str:
    """The URL as an operator would configure it locally: sf adds the password from
    var/secrets itself, so the subprocesses' environment never holds it either."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@pytest.fixture(scope="module")
def databases(base_config: Config) -> Iterator[dict[str, str]]:
    """A migrated database for the app and an empty one (a machine being rebuilt)."""
    yield from main_and_empty_databases(base_config.database_url, "sf_backup")


@pytest.fixture
def config(base_config: Config, databases: dict[str, str], tmp_path: Path) -> Config:
    return base_config.replace(database_url=databases["main"], backup_dir=tmp_path / "backups",
                               backup_encryption_key=new_backup_key(),
                               audit_log_file=tmp_path / "log" / "audit.jsonl")


def new_backup_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def audit_lines(config: Config) -> list[dict[str, Any]]:
    return [json.loads(line) for line in config.audit_log_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def postgres_password(base_config: Config) -> str:
    password = urlsplit(base_config.database_url).password
    assert password, "the local database URL carries the generated password"
    return password


class ProcessWatch:
    """Records the command line and environment of every process whose command line names
    `marker` (polled from /proc while the commands run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.seen: dict[int, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        own = os.getpid()
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) in (own, *self.seen):
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
                    if self.marker not in cmdline:
                        continue
                    with open(f"/proc/{entry.name}/environ", "rb") as handle:
                        environ = handle.read().replace(b"\0", b"\n").decode(errors="replace")
                except OSError:
                    continue  # gone already
                self.seen[int(entry.name)] = (cmdline, environ)
            time.sleep(0.001)

    def stop(self) -> list[tuple[str, str]]:
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())


def run_sf(config: Config, *args: str, database_url: str | None = None,
           **env: str) -> subprocess.CompletedProcess[str]:
    """`sf <args>` as a real process, configured through its environment like cron would."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SF_")}
    environ.update(SF_DATABASE_URL=without_password(database_url or config.database_url),
                   SF_REDIS_URL=without_password(config.redis_url),  # this slot's Redis db
                   SF_BACKUP_DIR=str(config.backup_dir), SF_LOG_LEVEL="INFO",
                   SF_BACKUP_ENCRYPTION_KEY=config.backup_encryption_key,
                   SF_AUDIT_LOG_FILE=str(config.audit_log_file))
    environ.update(env)
    return subprocess.run([SF, *args], env=environ, capture_output=True, text=True, timeout=120)


async def snapshot(url: str) -> dict[str, Any]:
    """Every row of every table of the public schema (as JSON, sorted) and every sequence."""
    connection = await asyncpg.connect(url)
    try:
        tables = [row["tablename"] for row in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        rows = {table: sorted(row[0] for row in await connection.fetch(
            f'SELECT to_jsonb(t)::text FROM "{table}" t')) for table in tables}
        sequences = {row["sequencename"]: row["last_value"] for row in await connection.fetch(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")}
        return {"tables": rows, "sequences": sequences}
    finally:
        await connection.close()


async def execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def fill_through_the_app(api: Api, services: Any) -> dict[str, Any]:
    """Users, follows, stream keys and settings, streams (one live), invites, statistics,
    chat (settings, a moderator, a timeout, the moderation log, a message)."""
    alice = await api.register("alice")
    bob = await api.register("bob")
    carol = await api.register("carol")
    for fan, star in ((bob, "alice"), (carol, "alice"), (alice, "bob")):
        assert (await api.post(f"/api/users/{star}/follow", token=fan["access_token"])).status == 204
    assert (await api.put("/api/users/profile", {"bio": "streams at night"},
                          token=alice["access_token"])).status == 200
    assert (await api.get("/api/stream/key", token=bob["access_token"])).status == 200
    prepared = await api.post("/api/streams", {"title": "bob's first"}, token=bob["access_token"])
    assert prepared.status == 201, prepared
    live = await go_live(api, services, alice, title="alice live", is_private=True, category_id=1)
    assert (await api.put("/api/stream/allowed-viewers/carol", token=alice["access_token"])).status == 204
    frank = await api.register("frank")  # a deleted account: a row in the erasure ledger
    assert (await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                              token=frank["access_token"])).status == 202
    await set_viewers(services, live, 5)
    assert await services.statistics.sample() == 1  # a viewer sample and the stream's statistics
    # Chat (issue 22): settings, a moderator and a timeout, each in the moderation log, through
    # the REST; a message through the send path (what a /live socket's chat.send calls).
    assert (await api.put("/api/channel/chat/settings", {"slow_mode_seconds": 5,
                                                         "blocked_terms": ["spoiler"]},
                          token=alice["access_token"])).status == 200
    assert (await api.put("/api/channel/moderators/bob", token=alice["access_token"])).status == 204
    sent = await services.chat.send(alice["user"]["id"], live, alice["user"]["id"], "welcome",
                                    "n1")
    assert sent["type"] == "chat.ack", sent
    assert (await api.put("/api/channel/bans/carol?channel=alice", {"duration_seconds": 600},
                          token=bob["access_token"])).status == 200
    # Notifications and webhooks (issue 23): a setting, a mute, a notice, a browser's push
    # subscription, a webhook and the delivery a follow queues for it.
    assert (await api.put("/api/notifications/settings", {"stream.online": {"email": True}},
                          token=bob["access_token"])).status == 200
    assert (await api.put("/api/notifications/mutes/alice",
                          token=carol["access_token"])).status == 204
    await services.notifications.tell(bob["user"]["id"], "webhook.disabled", {"webhook_id": 1})
    await services.db.execute(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth) VALUES ($1,"
        " 'https://push.example.com/s/1', repeat('B', 87), repeat('A', 22))", bob["user"]["id"])
    hook = await api.post("/api/webhooks", {"url": "https://93.184.215.14/sf",
                                            "events": ["follow.created"]},
                          token=bob["access_token"])
    assert hook.status == 201, hook
    assert (await api.post("/api/users/bob/follow", token=carol["access_token"])).status == 204
    # Rows of issue 21 with values of their own: a login from elsewhere, a pending export
    # (one made through the API would be built while the backup runs).
    await services.db.execute(
        "INSERT INTO login_records (user_id, session_id, kind, ip) VALUES ($1, 's', 'login',"
        " '203.0.113.5'); INSERT INTO exports (user_id) VALUES ($1)".replace("$1", str(alice["user"]["id"])))
    return alice


# --- backup, damage, restore: every row back ------------------------------------------------

@pytest.mark.gen_test(timeout=240)
async def test_backup_then_restore_brings_back_every_row_of_every_table(
        api, services, config, databases, postgres_password, tmp_path):
    url = databases["main"]
    alice = await fill_through_the_app(api, services)
    before = await snapshot(url)
    assert "schema_migrations" in before["tables"]
    empty = [table for table, rows in before["tables"].items() if not rows]
    assert empty == [], f"tables without rows make the comparison weaker: {empty}"

    # pg_dump and pg_restore name the database (their archives stream through pipes).
    watch = ProcessWatch(urlsplit(url).path.lstrip("/"))
    outputs: list[str] = []
    try:
        made = run_sf(config, "backup")
        outputs += [made.stdout, made.stderr]
        assert made.returncode == 0, made.stderr
        result = json.loads(made.stdout)
        dump = Path(result["backup"])
        assert dump.parent == config.backup_dir and dump.is_file()
        assert result["database"] == urlsplit(url).path.lstrip("/")
        checked = subprocess.run(["sha256sum", "-c", dump.name + ".sha256"], cwd=dump.parent,
                                 capture_output=True, text=True)
        assert checked.returncode == 0 and checked.stdout.strip() == f"{dump.name}: OK"
        assert oct(dump.stat().st_mode & 0o777) == "0o600"
        assert oct(config.backup_dir.stat().st_mode & 0o777) == "0o700"
        # Encrypted: none of the personal data, not even PostgreSQL's dump header, in clear
        # (security.md#backup-in-clear).
        archive = dump.read_bytes()
        assert archive.startswith(BackupCipher.MAGIC) and result["encrypted"] is True
        for clear in (b"PGDMP", b"streams at night", b"alice", b"$2b$", b"users"):
            assert clear not in archive, clear

        # Data changes after the backup: rows deleted and changed, a new user, a table dropped,
        # the migrations table touched.
        await api.register("dave")
        await execute(url, "DELETE FROM follows", "UPDATE users SET bio = 'changed'",
                      "UPDATE streams SET title = 'changed'",
                      "DELETE FROM schema_migrations WHERE version = 8",
                      "DROP TABLE allowed_viewers", "TRUNCATE stream_viewer_samples")
        changed = await snapshot(url)
        assert changed != before

        # A database that holds tables is only overwritten when asked to.
        refused = run_sf(config, "restore", str(dump))
        outputs += [refused.stdout, refused.stderr]
        assert refused.returncode == 1
        assert "--force" in refused.stderr and "nothing was changed" in refused.stderr
        assert await snapshot(url) == changed
        profile = await api.get("/api/users/profile", token=alice["access_token"])
        assert profile.status == 200  # a refused restore ends no session either

        restored = run_sf(config, "restore", str(dump), "--force", SF_OPERATOR="ops-oncall")
        outputs += [restored.stdout, restored.stderr]
        assert restored.returncode == 0, restored.stderr
        report = json.loads(restored.stdout)
        assert report["tables"] == len(before["tables"]) and report["sessions_cleared"] >= 8
        after = await snapshot(url)
        assert after["tables"].keys() == before["tables"].keys()
        for table in before["tables"]:
            assert after["tables"][table] == before["tables"][table], table
        assert after == before

        # Onto a fresh, empty database (a rebuilt machine): no --force needed.
        fresh = run_sf(config, "restore", dump.name, database_url=databases["empty"])
        outputs += [fresh.stdout, fresh.stderr]
        assert fresh.returncode == 0, fresh.stderr
        assert await snapshot(databases["empty"]) == before
    finally:
        processes = watch.stop()

    # Every run is in the audit log: who, what, when, for which accounts, how it ended.
    lines = audit_lines(config)
    assert [(line["action"], line["details"]["outcome"]) for line in lines] == [
        ("backup", "started"), ("backup", "ok"), ("restore", "started"),
        ("restore", "failed: BackupError"), ("restore", "started"), ("restore", "ok"),
        ("restore", "started"), ("restore", "ok")]
    assert {line["account"] for line in lines} == {"*"}  # every account's data
    assert lines[1]["details"]["file"] == dump.name and lines[1]["details"]["sha256"]
    assert lines[5]["operator"] == "ops-oncall" and lines[5]["os_user"] == lines[0]["operator"]
    assert all(line["time"].endswith("Z") for line in lines)
    assert oct(config.audit_log_file.stat().st_mode & 0o777) == "0o600"

    # Every session ended (ids after the backup's are handed out again); the restored database
    # serves the app: old passwords work, sequences continue.
    assert (await api.get("/api/users/profile", token=alice["access_token"])).status == 401
    login = await api.post("/api/auth/login", {"username": "alice", "password": "password123"})
    assert login.status == 200, login
    assert (await api.get("/api/users/alice")).json["followers_count"] == 2
    assert (await api.post("/api/auth/login", {"username": "dave", "password": "password123"})
            ).status == 401
    erin = await api.register("erin")
    assert erin["user"]["id"] > max(json.loads(row)["id"] for row in before["tables"]["users"])

    # The password was never in an argument, an environment or an output.
    programs = [cmdline.split()[0] for cmdline, _ in processes]
    assert any(p.endswith("/pg_dump") for p in programs), programs
    assert any(p.endswith("/pg_restore") for p in programs), programs
    for cmdline, environ in processes:
        assert postgres_password not in cmdline, cmdline
        assert postgres_password not in environ, cmdline
        assert "PGPASSWORD" not in environ
    assert all(postgres_password not in text for text in outputs)
    redis_password = urlsplit(config.redis_url).password
    assert redis_password and all(redis_password not in cmdline + environ
                                  for cmdline, environ in processes)
    assert postgres_password not in Target.of(config.database_url).url


def test_a_wrong_password_fails_clearly_without_showing_it(config):
    wrong = "Wr0ngPassw0rd" + secrets.token_hex(6)
    parts = urlsplit(config.database_url)
    url = urlunsplit((parts.scheme, f"sf:{wrong}@{parts.hostname}:{parts.port}", parts.path, "", ""))
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SF_")}
    failed = subprocess.run([SF, "backup"], capture_output=True, text=True, timeout=60,
                            env={**environ, "SF_DATABASE_URL": url,
                                 "SF_BACKUP_DIR": str(config.backup_dir)})
    assert failed.returncode == 1
    assert "sf backup: pg_dump failed" in failed.stderr and "password authentication" in failed.stderr
    assert wrong not in failed.stderr + failed.stdout
    assert not [path for path in config.backup_dir.iterdir()], "a failed backup leaves nothing"


# --- retention, damage, the freshness metric ------------------------------------------------

def metric(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("sf_backup_last_success_timestamp_seconds "):
            return float(line.split()[1])
    raise AssertionError("sf_backup_last_success_timestamp_seconds is not exported")


@pytest.mark.gen_test(timeout=240)
async def test_retention_damage_and_the_freshness_metric(api, services, config, databases):
    url = databases["main"]
    assert metric((await api.get("/metrics")).body.decode()) == 0  # no backup yet
    await api.register("alice")
    names = []
    for _ in range(3):
        made = run_sf(config, "backup", SF_BACKUP_KEEP="2")
        assert made.returncode == 0, made.stderr
        names.append(Path(json.loads(made.stdout)["backup"]).name)
    assert json.loads(made.stdout)["removed"] == [str(config.backup_dir / names[0]),
                                                  str(config.backup_dir / (names[0] + ".sha256"))]
    assert sorted(path.name for path in config.backup_dir.iterdir()) == [
        names[1], names[1] + ".sha256", names[2], names[2] + ".sha256"]
    newest, older = config.backup_dir / names[2], config.backup_dir / names[1]
    assert metric((await api.get("/metrics")).body.decode()) == backup_time(newest.name)
    assert abs(backup_time(newest.name) - time.time()) < 60  # type: ignore[operator]

    # One flipped byte in the middle of the newest dump: refused, nothing changes.
    await api.register("bob")
    before = await snapshot(url)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    refused = run_sf(config, "restore", str(newest), "--force")
    assert refused.returncode == 1
    assert "does not match its checksum" in refused.stderr
    assert "nothing was restored" in refused.stderr
    assert refused.stdout == ""
    assert await snapshot(url) == before
    # The metric now reports the newest dump that still matches.
    assert metric((await api.get("/metrics")).body.decode()) == backup_time(older.name)

    # A dump without its checksum file is refused too.
    (config.backup_dir / (older.name + ".sha256")).unlink()
    unverifiable = run_sf(config, "restore", older.name, "--force")
    assert unverifiable.returncode == 1 and "cannot be verified" in unverifiable.stderr
    assert await snapshot(url) == before
    assert metric((await api.get("/metrics")).body.decode()) == 0
    missing = run_sf(config, "restore", "sf-20000101T000000.000Z.dump")
    assert missing.returncode == 1 and "no such backup file" in missing.stderr


# --- encrypted archives: tampering, truncation, another key ----------------------------------

def rechecksum(dump: Path) -> None:
    """Make the checksum beside an altered archive match it, as an attacker who can write the
    backup directory would: only the encryption can tell then."""
    (dump.parent / (dump.name + ".sha256")).write_text(f"{file_sha256(dump)}  {dump.name}\n")


@pytest.mark.gen_test(timeout=240)
async def test_an_altered_truncated_or_foreign_archive_is_refused_before_the_database(
        api, services, config, base_config, databases, tmp_path):
    """security.md#backup-tampering: with its checksum made to match, an archive with one
    flipped byte, one cut short, one with a chunk appended, and the right archive under another
    key are each refused with the reason, the database untouched; without a key nothing runs."""
    url = databases["main"]
    await api.register("alice")
    made = run_sf(config, "backup")
    assert made.returncode == 0, made.stderr
    dump = Path(json.loads(made.stdout)["backup"])
    original = dump.read_bytes()
    await api.register("bob")
    before = await snapshot(url)

    cases = {
        "fails authentication": original[:len(original) // 2] + bytes([original[len(original) // 2] ^ 1])
        + original[len(original) // 2 + 1:],
        "truncated": original[:-100],
        "after its last chunk": original + original[-200:],
        "not an encrypted sf backup": b"PGDMP" + original[5:],
    }
    for reason, altered in cases.items():
        dump.write_bytes(altered)
        rechecksum(dump)
        refused = run_sf(config, "restore", str(dump), "--force")
        assert refused.returncode == 1, reason
        assert reason in refused.stderr and "nothing was restored" in refused.stderr, refused.stderr
        assert await snapshot(url) == before
    dump.write_bytes(original)
    rechecksum(dump)
    foreign = run_sf(config, "restore", str(dump), "--force",
                     SF_BACKUP_ENCRYPTION_KEY=new_backup_key())
    assert foreign.returncode == 1
    assert "another SF_BACKUP_ENCRYPTION_KEY" in foreign.stderr
    assert await snapshot(url) == before
    bare = tmp_path / "var"  # a var directory with every secret but the backup key
    shutil.copytree(base_config.secrets_dir, bare / "secrets")
    (bare / "secrets" / "backup_encryption_key").unlink(missing_ok=True)
    keyless = run_sf(config, "restore", str(dump), "--force", SF_BACKUP_ENCRYPTION_KEY="",
                     SF_VAR_DIR=str(bare))
    assert keyless.returncode == 2 and "SF_BACKUP_ENCRYPTION_KEY" in keyless.stderr
    assert await snapshot(url) == before
    # The right key still restores it.
    restored = run_sf(config, "restore", str(dump), "--force")
    assert restored.returncode == 0, restored.stderr
    assert (await api.post("/api/auth/login", {"username": "bob", "password": "password123"})
            ).status == 401  # bob came after the backup
    outcomes = [line["details"]["outcome"] for line in audit_lines(config)
                if line["action"] == "restore"]
    assert outcomes.count("failed: BackupError") == 5 and outcomes[-1] == "ok"


def test_reordered_or_spliced_chunks_do_not_open(monkeypatch):
    """security.md#backup-tampering, chunk by chunk: an archive of several chunks opens whole,
    and swapping two chunks, dropping the last one, or splicing in a chunk of another archive
    of the same key are each refused."""
    monkeypatch.setattr(BackupCipher, "CHUNK", 64)
    cipher = BackupCipher(new_backup_key())
    plain = secrets.token_bytes(64 * 3 + 10)

    def seal(data: bytes) -> bytes:
        sink = io.BytesIO()
        cipher.encrypt_stream(io.BytesIO(data), sink)
        return sink.getvalue()

    def chunks(archive: bytes) -> tuple[bytes, list[bytes]]:
        size = len(BackupCipher.MAGIC) + 24
        header, rest, found = archive[:size], archive[size:], []
        while rest:
            length = 4 + int.from_bytes(rest[:4], "big")
            found.append(rest[:length])
            rest = rest[length:]
        return header, found

    archive = seal(plain)
    assert b"".join(cipher.decrypt_chunks(io.BytesIO(archive))) == plain
    header, parts = chunks(archive)
    assert len(parts) == 4
    _, others = chunks(seal(secrets.token_bytes(64 * 3 + 10)))
    for altered in (header + parts[1] + parts[0] + parts[2] + parts[3],
                    header + b"".join(parts[:3]),
                    header + parts[0] + others[1] + parts[2] + parts[3]):
        with pytest.raises(BackupDecryptionError):
            cipher.verify(io.BytesIO(altered))


# --- Redis: sessions survive a crash --------------------------------------------------------

def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Node:
    """Services and an HTTP server of the app on a free port, driven like a client would."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def __aenter__(self) -> Api:
        self.services = await start_services(self.config)
        sock, port = tornado.testing.bind_unused_port()
        self.server = tornado.httpserver.HTTPServer(make_app(self.services))
        self.server.add_sockets([sock])
        self.client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        return Api(self.client, f"http://127.0.0.1:{port}")

    async def __aexit__(self, *exc: object) -> None:
        self.server.stop()
        self.client.close()
        await self.services.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_session_survives_a_redis_crash_with_the_rendered_configuration(config, tmp_path):
    assert not port_open(REDIS_PORT), f"port {REDIS_PORT} is taken"
    var = tmp_path / "var"
    (var / "secrets").mkdir(parents=True)
    password = secrets.token_urlsafe(16)
    (var / "secrets" / "redis_password").write_text(password + "\n")
    own = config.replace(var_dir=var, redis_url=f"redis://:{password}@127.0.0.1:{REDIS_PORT}/0")
    redis = LocalRedis(own)  # the shared Redis is never touched: this one lives in tmp_path
    assert redis.start()
    try:
        rendered = (var / "redis" / "redis.conf").read_text()
        assert "appendonly yes" in rendered and "appendfsync everysec" in rendered
        async with Node(own) as api:
            tokens = await api.register("sleeper")
            assert (await api.get("/api/users/profile", token=tokens["access_token"])).status == 200
        # appendfsync everysec: written to the file at once, synced within a second (what a
        # killed process needs is the write; the wait covers the sync as well).
        await asyncio.sleep(1.2)
        pid = int(redis.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)  # a crash: no shutdown save
        for _ in range(100):
            if not port_open(REDIS_PORT) and not alive(pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(pid)
        redis.pid_file.unlink(missing_ok=True)  # stale after a crash (its pid may be a zombie)
        assert redis.start()  # the same rendered configuration, the same directory
        assert int(redis.pid_file.read_text()) != pid
        async with Node(own) as api:
            profile = await api.get("/api/users/profile", token=tokens["access_token"])
            assert profile.status == 200, profile
            assert profile.json["username"] == "sleeper"
            refreshed = await api.post("/api/auth/refresh-token",
                                       {"refresh_token": tokens["refresh_token"]})
            assert refreshed.status == 200, refreshed
            # Control: a token of a session that never existed is refused the same way.
            assert (await api.post("/api/auth/logout", token=tokens["access_token"])).status == 204
            assert (await api.get("/api/users/profile", token=tokens["access_token"])).status == 401
    finally:
        redis.stop()


# --- point-in-time recovery with PostgreSQL's own tools -------------------------------------

def as_postgres(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, **kwargs)
    assert result.returncode == 0, f"{args[0]}: {result.stdout}{result.stderr}"
    return result


def test_point_in_time_recovery_from_a_base_backup_and_archived_wal():
    assert not port_open(PITR_PORT), f"port {PITR_PORT} is taken"
    base = Path(tempfile.mkdtemp(prefix="sf-pitr-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, archive, restored = base / "data", base / "archive", base / "restored"
    pg_ctl, psql = postgres_program("pg_ctl"), postgres_program("psql")

    def sql(statement: str) -> str:
        return as_postgres(psql, "-h", str(base), "-p", str(PITR_PORT), "-U", "postgres",
                           "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc",
                           statement).stdout.strip()

    running: list[Path] = []
    try:
        as_postgres("mkdir", str(archive))
        as_postgres(postgres_program("initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
        with open(data / "postgresql.auto.conf", "a") as conf:  # what docs/operations.md tells production
            conf.write(f"port = {PITR_PORT}\nlisten_addresses = ''\n"
                       f"unix_socket_directories = '{base}'\n"
                       "wal_level = replica\narchive_mode = on\n"
                       f"archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n")
        as_postgres(pg_ctl, "-D", str(data), "-l", str(base / "data.log"), "-w", "start")
        running.append(data)
        sql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        sql("INSERT INTO orders SELECT i, 'in the base backup' FROM generate_series(1, 3) i")
        as_postgres(postgres_program("pg_basebackup"), "-h", str(base), "-p", str(PITR_PORT),
                    "-U", "postgres", "-D", str(restored), "-X", "stream", "--checkpoint=fast")
        sql("INSERT INTO orders SELECT i, 'before the target' FROM generate_series(4, 6) i")
        # Commit times and the target are the same server's clock, to the microsecond: a tenth
        # of a second either side keeps each commit clearly on its side of the target.
        time.sleep(0.1)
        target = sql("SELECT clock_timestamp()")
        time.sleep(0.1)
        sql("INSERT INTO orders SELECT i, 'after the target (a mistake)' "
            "FROM generate_series(7, 9) i")
        last = sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while not (archive / last).exists():
            assert time.monotonic() < deadline, "the WAL segment was never archived"
            time.sleep(0.2)
        assert sql("SELECT count(*) FROM orders") == "9"
        as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")  # the disaster
        running.remove(data)

        # Recover the base backup to the target time from the archive.
        with open(restored / "postgresql.auto.conf", "a") as conf:
            conf.write("archive_mode = off\n"
                       f"restore_command = 'cp {archive}/%f %p'\n"
                       f"recovery_target_time = '{target}'\n"
                       "recovery_target_action = 'promote'\n")
        (restored / "recovery.signal").touch()
        if os.geteuid() == 0:
            shutil.chown(restored / "recovery.signal", "postgres", "postgres")
        started = time.monotonic()
        as_postgres(pg_ctl, "-D", str(restored), "-l", str(base / "restored.log"), "-w", "start")
        running.append(restored)
        while sql("SELECT pg_is_in_recovery()") == "t":
            assert time.monotonic() - started < 60, "recovery did not finish"
            time.sleep(0.2)
        rows = sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM orders")
        assert rows == "1,2,3,4,5,6", rows
        log_text = (base / "restored.log").read_text()
        assert "recovery stopping before commit" in log_text, log_text
    finally:
        for directory in running:
            subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(directory),
                            "-m", "immediate", "-w", "stop"] if os.geteuid() == 0 else
                           [pg_ctl, "-D", str(directory), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
