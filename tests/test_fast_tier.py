"""The fast tier's guard: a test not marked platform cannot start nginx, FFmpeg, a browser
or SF node processes, so `pytest -m "not platform"` never hides a slow test (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.conftest import LaunchGuard, PlatformLaunchRefused, platform_program


@pytest.mark.parametrize("command,program", [
    (["/usr/sbin/nginx", "-p", "/tmp/x", "-g", "daemon off;"], "nginx"),
    (["ffmpeg", "-hide_banner", "-i", "rtmp://127.0.0.1/live/1"], "ffmpeg"),
    (["/usr/bin/ffprobe", "-v", "error"], "ffprobe"),
    (["/usr/bin/chromium", "--headless"], "chromium"),
    (["/venv/lib/playwright/driver/node", "cli.js", "run-driver"],
     "the Playwright driver (a browser)"),
    ([sys.executable, "-m", "sf.app", "serve"], "sf serve"),
    ([sys.executable, "-m", "sf.app", "node", "--no-edge"], "sf node"),
    (["/venv/bin/sf", "dev"], "sf dev"),
    ("exec nginx -t", "nginx"),
    ([sys.executable, "-m", "sf.app", "migrate"], None),
    (["/venv/bin/sf", "backup", "create"], None),
    (["pgrep", "-P", "1"], None),
    (["redis-server", "/tmp/redis.conf"], None),
])
def test_the_guard_knows_what_starts_a_platform(command, program):
    assert platform_program(command, shell=isinstance(command, str)) == program


def test_an_unmarked_test_cannot_start_nginx_or_ffmpeg(platform_launch_guard: LaunchGuard):
    """Refused before anything runs, by subprocess and by asyncio alike, and remembered for
    the end of the test (a launch from a thread that swallows the error still fails it)."""
    with pytest.raises(PlatformLaunchRefused, match="not marked platform"):
        subprocess.run(["nginx", "-v"], capture_output=True)

    async def start_ffmpeg() -> None:
        await asyncio.create_subprocess_exec("ffmpeg", "-version")

    with pytest.raises(PlatformLaunchRefused):
        asyncio.run(start_ffmpeg())
    assert platform_launch_guard.refused == ["nginx", "ffmpeg"]
    platform_launch_guard.refused.clear()  # refused on purpose: this test passes
    assert subprocess.run(["true"]).returncode == 0  # other programs start as before


@pytest.mark.platform
def test_a_platform_test_starts_them_freely(platform_launch_guard):
    assert platform_launch_guard is None
    assert subprocess.run(["nginx", "-v"], capture_output=True).returncode == 0
