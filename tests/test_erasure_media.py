"""Deleting an account while it streams, for real: FFmpeg publishes RTMP to nginx-rtmp, the
owner deletes the account, and the live stream ends, nginx-rtmp drops the publisher, the
viewers' sockets hear it, and the key publishes nothing any more."""

from __future__ import annotations

import asyncio

import pytest

from harness.client import PASSWORD, connect
from harness.platform import Platform, wait_for

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("erasure-node")).start()
    yield node
    node.stop()


def test_deleting_the_account_ends_the_live_stream_and_drops_the_publisher(platform):
    """security.md#deleted-account-stream-key"""
    user, publisher, stream = platform.go_live("leaver")
    sid = stream["id"]
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")

    async def scenario() -> None:
        viewer = await connect(platform.base_url, sid)
        await viewer.until(lambda v: v.viewers() is not None, what="the first total")
        status, body, _ = await asyncio.to_thread(
            platform.request, "DELETE", "/api/users/profile", {"password": PASSWORD},
            user["token"])
        assert status == 202, body
        await viewer.until(lambda v: any(m["type"] == "stream" and m["stream_id"] == sid
                                         and m["is_live"] is False for m in v.messages),
                           what="the stream-ended message")
        viewer.close()

    asyncio.run(scenario())
    assert publisher.wait(timeout=15) is not None  # nginx-rtmp dropped it
    wait_for(lambda: not platform.transcoder_pids(sid), 10, what="the transcoder to stop")
    status, _, _ = platform.request("GET", f"/api/streams/{sid}")
    assert status == 404
    status, body, _ = platform.request("GET", "/api/streams")
    assert status == 200 and sid not in [s["id"] for s in body["data"]]
    stale = platform.publish(user["key"], seconds=10)
    assert stale.wait(timeout=20) != 0  # the destroyed key is refused at on_publish
    status, _, _ = platform.request("GET", "/api/users/leaver")
    assert status == 404
