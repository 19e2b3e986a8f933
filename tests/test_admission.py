"""Transcoder admission (issue 19 point 6), on real media nodes: nginx-rtmp, `sf serve`,
FFmpeg, PostgreSQL and Redis. What a publish got is read from outside: its master playlist
(a ladder lists "360p" for these 640x360 sources, source-only lists "source" alone), whether
it went live at all, the node's metrics and its log lines.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from typing import Any

import pytest
import redis

from harness.platform import Platform, start_platforms, wait_for
from sf.services.media_nodes import NODE_KEY
from tests.helpers import fetch_value

pytestmark = pytest.mark.platform


def renditions(node: Platform, stream_id: int) -> list[str] | None:
    """The variant names of a stream's master playlist (None until it exists)."""
    status, body, _ = node.get(f"/hls/{stream_id}/master.m3u8")
    if status != 200:
        return None
    return sorted(line.split("/")[0] for line in body.decode().splitlines()
                  if line and not line.startswith("#"))


def goes_live_with(node: Platform, username: str, key: str) -> tuple[int, list[str]]:
    """Publish `key` to `node`; the stream id and the renditions it is served with."""
    node.publish(key, seconds=120)
    stream = wait_for(lambda: node.live_stream_of(username), 20, what=f"{username} live")
    names = wait_for(lambda: renditions(node, stream["id"]), 30,
                     what=f"{username}'s master playlist")
    return stream["id"], names


def is_refused(node: Platform, username: str, key: str) -> None:
    """Publish `key` to `node` and see nginx-rtmp drop it: the encoder exits, nothing is live."""
    publisher = node.publish(key, seconds=120)
    assert publisher.wait(timeout=20) != 0
    assert node.live_stream_of(username) is None


def admissions(node: Platform) -> Counter[tuple[str, str]]:
    """(decision, reason) of every admission line in the node's log."""
    found: Counter[tuple[str, str]] = Counter()
    for line in node.api_log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "admission":
            found[(record["decision"], record["reason"])] += 1
    return found


def metrics(node: Platform) -> str:
    """The ingest process's (process 0) metrics."""
    url = f"http://127.0.0.1:{node.config.api_internal_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                return float(match.group(3))
    return None


def sql(base_config: Any, statement: str, *args: Any) -> Any:
    return fetch_value(base_config.database_url, statement, *args)


def age_account(base_config: Any, username: str) -> None:
    sql(base_config, "UPDATE users SET created_at = now() - interval '2 days'"
        " WHERE username = $1", username)


@pytest.fixture
def two_nodes(base_config, tmp_path):
    a = Platform(base_config, tmp_path / "a", SF_MAX_TRANSCODERS="1")
    b = Platform(base_config, tmp_path / "b", SF_MAX_TRANSCODERS="2")
    start_platforms(a, b)
    yield a, b
    b.stop()
    a.stop()


def test_a_full_node_refuses_while_another_has_room_else_serves_source_only(two_nodes):
    a, b = two_nodes
    users = {name: a.register(name) for name in ("first", "second", "third", "fourth", "fifth")}

    _, names = goes_live_with(a, "first", users["first"]["key"])
    assert names == ["360p"]  # A's one ladder
    # A is full and B has room: refused, so the encoder's retry (through the RTMP balancer)
    # lands on B, which transcodes it.
    is_refused(a, "second", users["second"]["key"])
    _, names = goes_live_with(b, "second", users["second"]["key"])
    assert names == ["360p"]
    # An encoder pointed at A alone retries there: refused once, then served source-only.
    is_refused(a, "third", users["third"]["key"])
    third, names = goes_live_with(a, "third", users["third"]["key"])
    assert names == ["source"]
    wait_for(lambda: (status := a.get(f"/hls/{third}/source/index.m3u8"))[0] == 200
             and b".ts" in status[1], 20, what="the source rendition's segments")
    # B fills up too: nobody has room, so A serves source-only at once.
    _, names = goes_live_with(b, "fourth", users["fourth"]["key"])
    assert names == ["360p"]
    wait_for(lambda: _full(b), 10, what="B's heartbeat to say it is full")
    _, names = goes_live_with(a, "fifth", users["fifth"]["key"])
    assert names == ["source"]

    assert admissions(a) == Counter({("ladder", "ok"): 1, ("refused", "capacity"): 2,
                                     ("source_only", "capacity"): 2})
    assert admissions(b) == Counter({("ladder", "ok"): 2})
    text = metrics(a)
    assert metric(text, "sf_transcoders_running") == 1
    assert metric(text, "sf_transcoder_capacity") == 1
    assert metric(text, "sf_transcoder_admissions_total", decision="refused",
                  reason="capacity") == 2
    assert metric(text, "sf_transcoder_admissions_total", decision="source_only",
                  reason="capacity") == 2
    assert metric(text, "sf_transcoder_admissions_total", decision="ladder", reason="ok") == 1
    assert metric(metrics(b), "sf_transcoders_running") == 2


def _full(node: Platform) -> bool:
    """Whether the node's last heartbeat in the registry says it has no room."""
    with redis.Redis.from_url(node.config.redis_url) as client:
        heartbeat = client.get(NODE_KEY.format(node.config.media_node_url))
    return heartbeat is not None and json.loads(heartbeat)["has_room"] is False


def test_new_accounts_and_busy_address_ranges_get_no_ladder(base_config, tmp_path):
    # Every publish of the suite comes from 127.0.0.1: the hourly budget is what this range
    # has used so far plus three.
    # A stream an earlier test's node left live (its node stopped before its grace ran out)
    # would hold this range's one ladder: none of them is anyone's here.
    sql(base_config, "UPDATE streams SET is_live = false, ended_at = now() WHERE is_live")
    used = sql(base_config, "SELECT count(*) FROM streams WHERE publish_range = '127.0.0.0/24'"
               " AND started_at > now() - interval '1 hour'")
    node = Platform(base_config, tmp_path, SF_PUBLISH_GRACE_SECONDS="20",
                    SF_TRANSCODE_MIN_ACCOUNT_AGE_MINUTES="60", SF_PUBLISH_RANGE_LADDERS="1",
                    SF_PUBLISH_RANGE_GO_LIVES_PER_HOUR=str(used + 3)).start()
    try:
        users = {name: node.register(name) for name in ("newbie", "veteran", "neighbour",
                                                        "latecomer")}
        for name in ("veteran", "neighbour", "latecomer"):
            age_account(base_config, name)
        status, _, _ = node.request("PUT", "/api/stream/settings", {"source_passthrough": True},
                                    token=users["veteran"]["token"])
        assert status == 200

        _, names = goes_live_with(node, "newbie", users["newbie"]["key"])
        assert names == ["source"]  # an account of minutes: no x264 for it
        _, names = goes_live_with(node, "veteran", users["veteran"]["key"])
        assert names == ["360p", "source"]  # a ladder (plus the copied source it asked for)
        neighbour, names = goes_live_with(node, "neighbour", users["neighbour"]["key"])
        assert names == ["source"]  # its /24 has its one ladder already
        is_refused(node, "latecomer", users["latecomer"]["key"])  # third go-live this hour

        # A reconnect within the grace is no new go-live: it resumes despite the hourly limit.
        for publisher in node.publishers[2:3]:
            publisher.kill()
            publisher.wait()
        wait_for(lambda: sql(base_config, "SELECT disconnected_at IS NOT NULL FROM streams"
                             " WHERE id = $1", neighbour), 10, what="the publisher to leave")
        node.publish(users["neighbour"]["key"], seconds=120)
        wait_for(lambda: sql(base_config, "SELECT is_live AND disconnected_at IS NULL"
                             " FROM streams WHERE id = $1", neighbour), 20, what="the resume")
        assert node.live_stream_of("neighbour")["id"] == neighbour
        assert node.live_stream_of("latecomer") is None

        assert admissions(node) == Counter({
            ("source_only", "new_account"): 1, ("ladder", "ok"): 1,
            ("source_only", "range_ladders"): 2, ("refused", "range_rate"): 1})
        text = metrics(node)
        assert metric(text, "sf_transcoder_admissions_total", decision="refused",
                      reason="range_rate") == 1
        assert metric(text, "sf_transcoders_running") == 1
        log = node.api_log.read_text()
        assert '"address_range": "127.0.0.0/24"' in log
    finally:
        node.stop()


def test_a_busy_cpu_admits_no_new_ladder(base_config, tmp_path):
    # 1 %: the machine running this suite (and the publisher's own x264) is always busier.
    node = Platform(base_config, tmp_path, SF_TRANSCODE_CPU_MAX_PERCENT="1").start()
    try:
        user = node.register("cpu_starved")
        wait_for(lambda: (metric(metrics(node), "sf_node_cpu_busy_ratio") or 0) > 0.01, 15,
                 what="the node's CPU reading")
        _, names = goes_live_with(node, "cpu_starved", user["key"])
        assert names == ["source"]
        assert admissions(node) == Counter({("source_only", "cpu"): 1})
    finally:
        node.stop()
