"""Media benchmark: transcoding cost, real-time speed and honest latency of the HLS ladder.

Method (../shared/MEDIA-NOTES.md): a 16-bit frame counter is burnt into the published picture
as black/white blocks; the source is pre-encoded once (1080p30, 2 s GOP like OBS) and
published in real time with `-re -c copy` (so the publisher costs almost no CPU) from a known
start T0. The variant playlist is polled every 50 ms; each new segment is fetched at once and,
after the run, its last frame's counter N is decoded:

    availability latency = time first listed - (T0 + (N + 1) / fps)

Glass-to-glass for hls.js at its default live sync ≈ availability + 3 target durations.
A second phase publishes K copies of a 720p source with the ladder cut to 480p only and
reports whether each K is sustained (no playlist falls a segment behind real time in 20 s).

    .venv/bin/python bench/media.py [--seconds 40] [--max-streams 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402

from harness.measure import process_cpu  # noqa: E402
from harness.platform import Platform, wait_for  # noqa: E402
from sf.config import bootstrap_var_dir, ensure_secrets, load_config  # noqa: E402
from sf.db.migrate import recreate_database  # noqa: E402
from sf.node import localservices  # noqa: E402

BLOCK = 60          # counter block size in 1080p pixels
BITS = 16
FPS = 30


def counter_source(path: Path, size: str, seconds: int, bitrate: str) -> None:
    """Pre-encode testsrc2 with the frame number burnt in as 16 black/white blocks."""
    width = BLOCK * BITS
    bits = f"255*mod(floor(N/pow(2,floor(X/{BLOCK}))),2)"
    graph = (f"testsrc2=size={size}:rate={FPS}[bg];"
             f"color=black:size={width}x{BLOCK}:rate={FPS},format=gray,"
             f"geq=lum='{bits}',format=yuv420p[bits];"
             f"[bg][bits]overlay=0:0:shortest=1[v]")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-filter_complex", graph,
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-map", "[v]", "-map", "0:a",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate,
         "-g", str(2 * FPS), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", str(path)],
        check=True)


def decode_counter(segment: bytes, height: int) -> int | None:
    """The counter of the last frame of an MPEG-TS segment of a rendition of `height` lines."""
    scale = height / 1080
    width, block = round(BLOCK * BITS * scale), max(2, round(BLOCK * scale))
    with tempfile.NamedTemporaryFile(suffix=".ts") as handle:
        handle.write(segment)
        handle.flush()
        result = subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", handle.name,
             "-vf", f"crop={width}:{block}:0:0,scale={BITS}:1:flags=area",
             "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True)
    data = result.stdout
    if len(data) < BITS:
        return None
    last = data[-BITS:]
    return sum(1 << bit for bit, value in enumerate(last) if value > 128)


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def watch_playlist(base: str, variant: str, stop: threading.Event,
                   found: list[tuple[str, float, bytes]]) -> None:
    """Poll a variant playlist every 50 ms; keep (segment, first listed at, bytes)."""
    seen: set[str] = set()
    while not stop.is_set():
        status, body = fetch(f"{base}/{variant}/index.m3u8")
        now = time.time()
        if status == 200:
            for line in body.decode().splitlines():
                if line.endswith(".ts") and line not in seen:
                    seen.add(line)
                    _, data = fetch(f"{base}/{variant}/{line}")
                    found.append((line, now, data))
        time.sleep(0.05)


def publish_file(platform: Platform, key: str, path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(path), "-c", "copy",
         "-f", "flv", f"{platform.rtmp}/{key}"], stdin=subprocess.DEVNULL)
    platform.publishers.append(process)
    return process


def health(platform: Platform, stream_id: int) -> dict[str, Any]:
    redis = Redis.from_url(platform.config.redis_url)
    raw = redis.get(f"sf:media:health:{stream_id}")
    redis.close()
    return json.loads(raw) if raw else {}


def newest_segment(url: str) -> int | None:
    """Number of the newest segment in a media playlist (`seg_<run>_<n>.ts`: numbered from the
    epoch second FFmpeg started at, one per segment duration)."""
    status, body = fetch(url)
    if status != 200:
        return None
    numbers = [int(line[:-3].rsplit("_", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("seg_") and line.endswith(".ts")]
    return max(numbers) if numbers else None


class SegmentClock:
    """Real-time speed from the playlist itself: media seconds produced per wall second.

    (FFmpeg's own `speed` is a since-start average that the start-up catch-up inflates, and
    health reports arrive with actor scheduling jitter; the playlist is what viewers get.)
    """

    def __init__(self, url: str, segment_seconds: float) -> None:
        self.url, self.segment = url, segment_seconds
        self.start = (time.time(), newest_segment(url))

    def speed(self) -> float:
        now, newest = time.time(), newest_segment(self.url)
        started, first = self.start
        if newest is None or first is None:
            return 0.0
        return (newest - first) * self.segment / (now - started)


def ladder_phase(platform: Platform, source: Path, seconds: float) -> None:
    user = platform.register(f"bench1080_{int(time.time())}")
    t0 = time.time()
    publisher = publish_file(platform, user["key"], source)
    stream = wait_for(lambda: platform.live_stream_of(user["user"]["username"]), 20, what="live")
    sid = stream["id"]
    base = f"{platform.base_url}/hls/{sid}"
    pids = wait_for(lambda: platform.transcoder_pids(sid), 20, what="transcoder")
    master = wait_for(lambda: (lambda r: r[0] == 200 and r[1])(fetch(f"{base}/master.m3u8")), 30,
                      what="master playlist").decode()
    variants = [line.split("/")[0] for line in master.splitlines() if line.endswith(".m3u8")]
    top = variants[0]
    stop, found = threading.Event(), []
    watcher = threading.Thread(target=watch_playlist, args=(base, top, stop, found), daemon=True)
    watcher.start()
    time.sleep(5)  # let the pipeline settle before measuring CPU
    cpu0, wall0 = process_cpu(pids[0]), time.time()
    clock = SegmentClock(f"{base}/{top}/index.m3u8", platform.config.hls_segment_seconds)
    time.sleep(seconds)
    cpu1, wall1 = process_cpu(pids[0]), time.time()
    speed = clock.speed()
    stop.set()
    watcher.join()
    publisher.kill()
    height = int(top.rstrip("p"))
    latencies = []
    for _, listed_at, data in found[2:]:  # the first segments carry the start-up backlog
        counter = decode_counter(data, height)
        if counter is not None:
            latencies.append(listed_at - (t0 + (counter + 1) / FPS))
    latencies.sort()
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    print(f"ladder: source 1920x1080@{FPS} → {', '.join(variants)} "
          f"(preset {platform.config.transcode_preset})")
    print(f"  transcoder CPU: {cores:.2f} cores   real-time speed: {speed:.2f}x")
    if latencies:
        median = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        target = platform.config.hls_segment_seconds
        print(f"  frame published → segment listed ({len(latencies)} segments): "
              f"median {median:.2f} s, p95 {p95:.2f} s")
        print(f"  estimated glass-to-glass, hls.js default live sync (3 × {target} s): "
              f"median {median + 3 * target:.2f} s, p95 {p95 + 3 * target:.2f} s")
    else:
        print("  no segment could be decoded")


def capacity_phase(platform: Platform, source: Path, max_streams: int, seconds: float) -> None:
    print("480p-only streams (720p30 sources published with -c copy):")
    best = 0
    count = 1
    while count <= max_streams:
        users = [platform.register(f"cap{count}_{i}_{int(time.time())}") for i in range(count)]
        publishers = [publish_file(platform, u["key"], source) for u in users]
        streams = [wait_for(lambda u=u: platform.live_stream_of(u["user"]["username"]), 30,
                            what="live") for u in users]
        segment = platform.config.hls_segment_seconds
        urls = [f"{platform.base_url}/hls/{s['id']}/480p/index.m3u8" for s in streams]
        for url in urls:
            wait_for(lambda url=url: newest_segment(url) is not None, 60, what="a playlist")
        time.sleep(5)  # start-up catch-up is not steady state
        clocks = [SegmentClock(url, segment) for url in urls]
        time.sleep(seconds)
        speeds = [clock.speed() for clock in clocks]
        states = [health(platform, s["id"]).get("state", "?") for s in streams]
        # Over the window no stream may fall more than one segment behind real time.
        sustained = (all(speed >= 1 - segment / seconds for speed in speeds)
                     and all(state == "running" for state in states))
        print(f"  {count:>2} streams: speeds {min(speeds):.2f}..{max(speeds):.2f}x "
              f"→ {'sustained' if sustained else 'NOT sustained'}")
        for publisher in publishers:
            publisher.kill()
        time.sleep(3)
        if not sustained:
            break
        best = count
        count += 1 if count < 4 else 2
    print(f"  this machine sustains {best} concurrent 480p-only stream(s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--max-streams", type=int, default=10)
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--skip-ladder", action="store_true")
    args = parser.parse_args()
    ensure_secrets(bootstrap_var_dir())
    config = load_config()
    localservices.start_all(config)
    database_url = asyncio.run(recreate_database(config.database_url, "sf_bench_media"))
    work = Path(tempfile.mkdtemp(prefix="sf-bench-media-"))
    print(f"# SF media benchmark on {os.cpu_count()} cores; sources in {work}")
    source_1080 = work / "counter-1080p.mp4"
    source_720 = work / "counter-720p.mp4"
    if not args.skip_ladder:
        counter_source(source_1080, "1920x1080", int(args.seconds) + 30, "6M")
    counter_source(source_720, "1280x720", 60, "3M")
    platform = Platform(config.replace(database_url=database_url), work / "node",
                        SF_TRANSCODE_PRESET=args.preset, SF_THUMBNAIL_INTERVAL="10",
                        SF_PUBLISH_GRACE_SECONDS="0", SF_LOG_LEVEL="WARNING")
    if not args.skip_ladder:
        platform.start()
        try:
            ladder_phase(platform, source_1080, args.seconds)
        finally:
            platform.stop()
    if not args.skip_capacity:
        platform = Platform(config.replace(database_url=database_url), work / "node480",
                            SF_TRANSCODE_PRESET=args.preset, SF_LADDER="480",
                            SF_THUMBNAIL_INTERVAL="10", SF_PUBLISH_GRACE_SECONDS="0",
                            SF_LOG_LEVEL="WARNING")
        platform.start()
        try:
            capacity_phase(platform, source_720, args.max_streams, 20)
        finally:
            platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
