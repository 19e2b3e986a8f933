"""StreamActor on its own: restarts with backoff, degraded after repeated failures, clean stop.

The source does not exist (nothing listens on the RTMP port), so every start of the real
ffprobe/FFmpeg fails fast: exactly what a broken publisher or codec looks like to the actor.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sf.actors.bridge import LoopBridge
from sf.actors.directory import StreamDirectory
from tests.helpers import run_private

pytestmark = pytest.mark.platform


class RecordedEvents:
    """The loop side of the actor: records what it is told."""

    def __init__(self) -> None:
        self.health: list[dict[str, Any]] = []
        self.thumbnails: list[str] = []

    async def on_health(self, stream_id: int, health: dict[str, Any]) -> None:
        self.health.append(health)

    async def on_thumbnail(self, stream_id: int, url: str) -> None:
        self.thumbnails.append(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_repeated_failures_back_off_and_mark_the_stream_degraded(base_config, tmp_path):
    config = base_config.replace(rtmp_port=free_port(), media_dir=tmp_path / "media",
                                 var_dir=tmp_path / "var")
    events = RecordedEvents()

    async def scenario() -> None:
        directory = StreamDirectory(config, LoopBridge(asyncio.get_running_loop()), events)
        directory.start(7, private=True, passthrough=False, thumbnail_name="7-x.jpg")
        try:
            for _ in range(200):  # backoff 0.5 + 1 + 2 + 4 s before the fifth failure
                if any(h["state"] == "degraded" for h in events.health):
                    break
                await asyncio.sleep(0.1)
            health = await directory.health(7)  # asked without blocking the loop
            assert health is not None and health["state"] == "degraded"
            assert health["restarts"] >= 5 and "ffprobe failed" in health["last_error"]
        finally:
            await directory.stop_all()
            await asyncio.sleep(0.2)  # let the bridged "stopped" report run on the loop
        assert 7 not in directory
        assert events.health[-1]["state"] == "stopped"

    run_private(scenario())
    states = [h["state"] for h in events.health]
    assert states.index("degraded") > states.index("restarting")
    assert (tmp_path / "media" / "hls" / "7" / ".private").exists()
