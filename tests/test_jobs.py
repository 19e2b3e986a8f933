"""Scheduled jobs (issue 21): one round at a time over every node, address retention, `sf
privacy purge`, and client addresses minimised in logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from sf.observability import AddressMinimiser, RedactingJsonFormatter, access_log, configure_logging
from sf.services.jobs import JOBS_LOCK_KEY, ROUND_DONE_KEY, Job, JobRunner
from tests.helpers import go_live

pytestmark = pytest.mark.gen_test(timeout=90)


class Recorder:
    """A job that notes when each run started and ended, and who ran it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[tuple[str, float, float]] = []
        self.running = 0
        self.most_at_once = 0

    def job(self, runner_name: str) -> Job:
        async def run() -> dict[str, Any]:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            started = time.monotonic()
            try:
                await asyncio.sleep(self.seconds)
            finally:
                self.running -= 1
            self.runs.append((runner_name, started, time.monotonic()))
            return {"ok": True}
        return Job("record", run)


async def test_two_runners_never_run_a_round_at_once(services):
    recorder = Recorder(0.05)
    first = JobRunner(services.redis, "node-a", 0.05, [recorder.job("a")])
    second = JobRunner(services.redis, "node-b", 0.05, [recorder.job("b")])
    # Both runners, as on two nodes, look for rounds as fast as they can for two seconds.
    async def keep_ticking(runner: JobRunner) -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await asyncio.gather(runner.tick(), runner.run_round())
            await asyncio.sleep(0.001)

    await asyncio.gather(keep_ticking(first), keep_ticking(second))
    assert recorder.most_at_once == 1
    assert {name for name, _, _ in recorder.runs} == {"a", "b"}  # both got turns
    ordered = sorted(recorder.runs, key=lambda run: run[1])
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        assert earlier[2] <= later[1], (earlier, later)
    assert await services.redis.get(JOBS_LOCK_KEY) is None  # released after each round


async def test_a_round_that_loses_the_lock_stops_at_once(services):
    recorder = Recorder(1.5)
    slow = JobRunner(services.redis, "node-a", 60, [recorder.job("a")], lock_ttl=0.3)
    other = JobRunner(services.redis, "node-b", 60, [recorder.job("b")], lock_ttl=0.3)
    recorder_b = Recorder(0.01)
    other.jobs = [recorder_b.job("b")]
    round_a = asyncio.ensure_future(slow.run_round())
    await asyncio.sleep(0.05)
    assert await other.run_round() is None  # held by a
    # The lock is lost (as when a's Redis connection stalls past the TTL) and b takes it.
    await services.redis.delete(JOBS_LOCK_KEY)
    assert await other.lock.hold()
    assert await round_a is None  # a stopped within a renewal period
    assert recorder.runs == []  # a's job never completed
    assert await other.run_round() == {"record": {"ok": True}}


async def test_the_round_marker_spaces_rounds_over_all_nodes(services):
    recorder = Recorder(0.0)
    runners = [JobRunner(services.redis, f"node-{n}", 30, [recorder.job(str(n))])
               for n in range(3)]
    reports = [await runner.tick() for runner in runners]
    assert sum(report is not None for report in reports) == 1
    assert 0 < await services.redis.pttl(ROUND_DONE_KEY) <= 30000


async def test_a_failing_job_does_not_stop_the_others(services):
    async def broken() -> None:
        raise RuntimeError("disk on fire")

    recorder = Recorder(0.0)
    runner = JobRunner(services.redis, "n", 60, [Job("broken", broken), recorder.job("n")])
    report = await runner.run_round()
    assert report == {"broken": {"error": "RuntimeError: disk on fire"}, "record": {"ok": True}}


async def _user_id(api: Any, tokens: dict[str, Any]) -> int:
    return int((await api.get("/api/users/profile", token=tokens["access_token"])).json["id"])


async def test_addresses_are_erased_after_the_retention(api, services):
    old_streamer = await api.register("olds")
    live_streamer = await api.register("lives")
    await api.post("/api/auth/login", {"username": "olds", "password": "password123"})
    old_id = await _user_id(api, old_streamer)
    days = services.config.ip_retention_days
    await services.db.execute(
        "UPDATE login_records SET created_at = now() - make_interval(days => $2)"
        " WHERE user_id = $1 AND kind = 'register'", old_id, days + 1)
    ended = await go_live(api, services, old_streamer)
    await api.delete(f"/api/streams/{ended}", token=old_streamer["access_token"])
    live = await go_live(api, services, live_streamer)
    await services.db.execute(
        "UPDATE streams SET publish_range = '203.0.113.0/24',"
        " started_at = now() - make_interval(days => $1), created_at = now() - make_interval(days => $1)"
        " WHERE id = ANY($2::bigint[])", days + 1, [ended, live])
    report = await services.jobs.run_round()
    assert report is not None
    assert report["ip_retention"] == {"login_record_addresses": 1, "stream_publish_ranges": 1}
    rows = await services.db.fetch(
        "SELECT user_id, kind, host(ip) AS ip FROM login_records ORDER BY id")
    assert [(row["kind"], row["ip"]) for row in rows if row["user_id"] == old_id] == \
        [("register", None), ("login", "127.0.0.1")]
    ranges = dict(await services.db.fetch("SELECT id, publish_range FROM streams"))
    assert ranges[ended] is None and ranges[live] == "203.0.113.0/24"  # live: still counted


def _sf(config: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SF_DATABASE_URL": config.database_url, "SF_REDIS_URL": config.redis_url}
    return subprocess.run([sys.executable, "-m", "sf.app", *args], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_sf_privacy_purge_runs_one_round_and_prints_it(api, services, config):
    tokens = await api.register("pat")
    user_id = await _user_id(api, tokens)
    await services.db.execute(
        "UPDATE login_records SET created_at = now() - interval '400 days' WHERE user_id = $1",
        user_id)
    gone = await api.register("quin")  # deleted, its grace period over: erased by the round
    deleted = await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                                token=gone["access_token"])
    assert deleted.status == 202, deleted
    await services.db.execute("UPDATE users SET erase_after = now() WHERE id = $1",
                              gone["user"]["id"])
    result = _sf(config, "privacy", "purge")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["ran"] is True
    assert printed["jobs"]["ip_retention"]["login_record_addresses"] == 1
    assert printed["jobs"]["erasure"] == {"erased": 1}
    assert set(printed["jobs"]) == {"erasure", "stale_exports", "expired_exports", "ip_retention",
                                     "chat_retention", "notification_retention",
                                     "webhook_deliveries_retention"}
    # It destroyed people's data: audited (who, what, when), with what it erased.
    audited = [json.loads(line) for line in config.audit_log_file.read_text().splitlines()]
    assert [(line["action"], line["details"]["outcome"]) for line in audited[-2:]] == [
        ("privacy_purge", "started"), ("privacy_purge", "ok")]
    assert audited[-1]["details"]["erased"] == 1 and audited[-1]["operator"]
    # While a node's round holds the lock, the command waits for it and then gives up.
    assert await services.jobs.lock.hold()
    blocked = _sf(config, "privacy", "purge", "--wait", "0.5")
    assert blocked.returncode == 1 and json.loads(blocked.stdout)["ran"] is False
    await services.jobs.lock.release()


def test_log_addresses_truncated_or_hashed():
    truncate = AddressMinimiser("truncate")
    assert truncate("203.0.113.77") == "203.0.113.0/24"
    assert truncate("2001:db8:1234:5678::9") == "2001:db8:1234::/48"
    assert truncate("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert truncate("unix-socket") == "-"
    hashed = AddressMinimiser("hash", "a-secret-of-the-deployment")
    assert hashed("203.0.113.77") == hashed("203.0.113.77") != hashed("203.0.113.78")
    assert hashed("203.0.113.77") != AddressMinimiser("hash", "another-secret")("203.0.113.77")
    assert "203.0.113" not in hashed("203.0.113.77")
    assert AddressMinimiser("raw")("203.0.113.77") == "203.0.113.77"
    assert truncate.in_text("Malformed HTTP message from 203.0.113.77 at 12:30:01, v1.2.3") == \
        "Malformed HTTP message from 203.0.113.0/24 at 12:30:01, v1.2.3"
    assert truncate.in_text("peer 2001:db8:1234:5678::9 left") == "peer 2001:db8:1234::/48 left"


@pytest.mark.parametrize("mode", ["truncate", "hash"])
def test_log_lines_carry_no_raw_address(mode):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", out, ip_mode=mode, ip_secret="s" * 32)
    try:
        formatter = root.handlers[0].formatter
        assert isinstance(formatter, RedactingJsonFormatter)
        record = access_log.makeRecord("sf.access", logging.INFO, __file__, 1, "request", (),
                                       None, extra={
            "access_fields": True, "request_id": "r", "method": "GET", "path": "/api/streams",
            "status": 200, "duration_ms": 1.0, "user_id": None, "client_ip": "203.0.113.77"})
        logging.getLogger("sf.access").handle(record)
        logging.getLogger("sf.viewers").info("viewer socket refused",
                                             extra={"client_ip": "2001:db8::5"})
        logging.getLogger("tornado.general").info("Malformed HTTP message from %s",
                                                  "198.51.100.23")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    for raw in ("203.0.113.77", "2001:db8::5", "198.51.100.23"):
        assert raw not in text
    if mode == "truncate":
        assert lines[0]["client_ip"] == "203.0.113.0/24"
        assert lines[1]["client_ip"] == "2001:db8::/48"
