"""Live latency on the watch page, as hls.js reports it (`hls.latency`), with stalls counted.

Starts its own platform (`harness.platform`: database `sf_bench_web`, nginx + API node on
reserved ports, the Redis database of the SFTEST_SLOT run slot), publishes a 720p30 source in
real time (pre-encoded with a 1 s GOP and sent with `-c copy`, so the publisher costs no
encoding CPU; MEDIA-NOTES: the 720p + 480p veryfast ladder has CPU headroom on 2 cores, the
1080p three-rung one does not), opens /watch/<id> in headless Chromium and samples the player
every 250 ms for `--seconds` (60):

    .venv/bin/python bench/web_latency.py [--seconds 60] [--set liveSyncDuration=2] ...

Prints median / p95 / max latency, stalls (`waiting` after playback started, and hls.js
BUFFER_STALLED errors), the rung played and the player settings. `--set NAME=VALUE` overrides
one entry of the page's PLAYER_CONFIG (rewritten on its way to the browser) to compare tunings;
hls.js's defaults: `--set liveSyncDuration=undefined --set liveMaxLatencyDuration=undefined
--set maxLiveSyncPlaybackRate=1`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Route, sync_playwright  # noqa: E402

from harness.browser import launch_chromium  # noqa: E402
from harness.measure import percentile  # noqa: E402
from harness.platform import Platform, hls_ready, wait_for  # noqa: E402
from sf.config import bootstrap_var_dir, ensure_secrets, load_config  # noqa: E402
from sf.db.migrate import recreate_database  # noqa: E402
from sf.node import localservices  # noqa: E402

FPS = 30
SAMPLE_SECONDS = 0.25
PROBE = """() => {
    const watch = window.sfWatch, hls = watch && watch.hls, video = document.querySelector('#video');
    if (!hls) return null;
    const ranges = video.buffered;
    const level = hls.levels[hls.currentLevel];
    return {latency: hls.latency, target: hls.targetLatency, rate: video.playbackRate,
            time: video.currentTime, height: level ? level.height : 0, waiting: watch.stalls,
            hlsStalls: window.benchStalls || 0,
            buffered: ranges.length ? ranges.end(ranges.length - 1) - video.currentTime : 0};
}"""
COUNT_HLS_STALLS = """() => {
    window.benchStalls = 0;
    window.sfWatch.hls.on(window.Hls.Events.ERROR, (_, data) => {
        if (data.details === window.Hls.ErrorDetails.BUFFER_STALLED_ERROR) window.benchStalls += 1;
    });
}"""


def encode_source(path: Path, seconds: int) -> None:
    """720p30 testsrc2 + tone, H.264 with a 1 s GOP, as OBS would send it."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2500k", "-g", str(FPS),
         "-keyint_min", str(FPS), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "96k", "-f", "flv", str(path)], check=True)


def rewrite_config(overrides: dict[str, str]) -> Any:
    def handle(route: Route) -> None:
        body = route.fetch().text()
        for name, value in overrides.items():
            body, count = re.subn(rf"(\n  {name}: )[^,\n]+,", rf"\g<1>{value},", body, count=1)
            if not count:
                body = body.replace("export const PLAYER_CONFIG = {",
                                    f"export const PLAYER_CONFIG = {{\n  {name}: {value},", 1)
        route.fulfill(body=body, content_type="application/javascript; charset=utf-8")
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    ensure_secrets(bootstrap_var_dir())
    config = load_config({**os.environ, "SF_ENV": "test"})
    localservices.start_all(config)
    database_url = asyncio.run(recreate_database(config.database_url, "sf_bench_web"))
    work = Path(tempfile.mkdtemp(prefix="sf-web-latency-"))
    source = work / "source.flv"
    print(f"encoding a {args.seconds + 40} s 720p{FPS} source…", flush=True)
    encode_source(source, args.seconds + 40)
    platform = Platform(config.replace(database_url=database_url), work / "node",
                        SF_TRANSCODE_PRESET="veryfast", SF_LADDER="720,480")
    platform.start()
    try:
        user = platform.register("latency")
        platform.publishers.append(subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(source),
             "-c", "copy", "-f", "flv", f"{platform.rtmp}/{user['key']}"],
            stdin=subprocess.DEVNULL))
        stream = wait_for(lambda: platform.live_stream_of("latency"), 30, what="the stream")
        wait_for(lambda: hls_ready(platform, stream["id"], segments=3), 60, what="the ladder")
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(base_url=platform.base_url,
                                    viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            if overrides:
                page.route("**/static/js/watch.js", rewrite_config(overrides))
            page.goto(f"/watch/{stream['id']}")
            try:
                page.wait_for_function("() => window.sfWatch && window.sfWatch.playing",
                                       timeout=60_000)
            except PlaywrightError:
                sys.exit(f"the player did not start: {errors}")
            page.evaluate(COUNT_HLS_STALLS)
            settings = page.evaluate("() => JSON.stringify(window.sfWatch.hls.config, "
                                     "['liveSyncDuration', 'liveMaxLatencyDuration', "
                                     "'maxLiveSyncPlaybackRate', 'backBufferLength', "
                                     "'maxBufferLength', 'startLevel', 'lowLatencyMode'])")
            samples: list[dict[str, float]] = []
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                sample = page.evaluate(PROBE)
                if sample and sample["latency"]:
                    samples.append(sample)
                time.sleep(SAMPLE_SECONDS)
            browser.close()
        latencies = [s["latency"] for s in samples]
        last = samples[-1]
        heights = sorted({int(s["height"]) for s in samples})
        print(f"player settings: {settings}")
        print(f"samples: {len(samples)} over {args.seconds} s; rungs played: {heights}")
        print(f"hls.latency: median {statistics.median(latencies):.2f} s, "
              f"p95 {percentile(latencies, 95):.2f} s, max {max(latencies):.2f} s, "
              f"min {min(latencies):.2f} s (target {last['target']:.2f} s)")
        print(f"stalls: {int(last['waiting'])} (video waiting after start), "
              f"{int(last['hlsStalls'])} (hls.js buffer stalled errors)")
        print(f"buffer ahead: median {statistics.median(s['buffered'] for s in samples):.2f} s; "
              f"console errors: {len(errors)}")
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
