"""HLS viewers benchmark: N simulated hls.js players of one live 480p stream through the public port.

Starts the platform the way a user does (`.venv/bin/sf dev`, what `make run` runs, as a child
with a var dir of its own under /tmp, database `sf_hlsbench` and Redis db 8 on the project's
running PostgreSQL and Redis, 9 consecutive ports reserved by harness.ports), registers a
streamer, publishes a 480p30 testsrc2 source with a 1 s GOP over RTMP (so the ladder is a single
480p rung) and finds the stream's playback URL in GET /api/streams. Only the public port
(SF_HTTP_PORT) is driven.

Players (bench/hlsplayers.py): N players spread over P processes at nice 10, ramped in over
--ramp seconds, each on one keep-alive connection from its own loopback address, behaving like
hls.js (reload the media playlist every segment duration, half that when it did not change;
start 3 segments back; fetch each new segment once). After the ramp and --warmup seconds it
measures for --seconds:

- errors by kind (HTTP status, timeouts after 10 s, connections reset or closed mid-answer);
- segment download time (request written -> last byte) p50/p95/p99/max;
- stalls: a segment that arrived after the player's simulated buffer (the #EXTINF durations of
  the segments it had, playback starting at the first one) ran out; and the buffer left at each
  arrival (p1, p50), i.e. how close the players came to stalling;
- playlist age: arrival of a playlist - the time the origin wrote that version of it (the mtime
  of the media playlist on disk when it first listed that newest segment, polled every 10 ms).
  A fresh origin serves ages spread over 0..1 segment; a cache adds its staleness. With --url
  (no disk) the write time is when any player first saw that newest segment: a lower bound;
- throughput; requests the origin (the media node's nginx, var/log/nginx-access.log) served for
  /hls/ per segment produced; CPU over the window, as % of one core, of the edge's nginx workers
  (the nginx serving the public port), the transcoder, the rest of the platform, the players
  themselves (with their event loop's lateness: a late generator measures itself) and the
  whole machine.

--capacity: then h2load (Debian's nghttp2-client) over HTTP/1.1, open loop (--rps, 10/s per
connection over many connections), at increasing rates against the media playlist and the two
newest segments (half the rate each, the segments fetched once first so that the edge's cache
holds them), until errors appear, p99 passes the target or the achieved rate falls short; per
rate it prints the achieved rate, p50/p99/max, errors and the edge's CPU.

    .venv/bin/python bench/hls.py [--viewers 10000] [--processes 2] [--seconds 30] [--capacity]
        [--keep] [--url http://127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hlsplayers import player_process, resolve  # noqa: E402
from bench.hlsstack import (  # noqa: E402
    H2LOAD_MISSING,
    PlaylistWatcher,
    Stack,
    cpu_by_label,
    h2load_step,
    hls_requests,
    live_stream,
    media_playlist,
    tree_cpu,
    wait,
)
from harness.client import http  # noqa: E402
from harness.measure import log, machine_busy, percentile  # noqa: E402

SEGMENT_P99_TARGET, PLAYLIST_AGE_P99_TARGET = 0.250, 1.5


def find_stream(base_url: str) -> tuple[str, str]:
    """(master path, 480p media playlist path) of the live stream, once it has 4 segments."""
    _, master = wait(lambda: live_stream(base_url), 60, "a live stream in GET /api/streams")
    from bench.hlsplayers import pick_variant

    def variant() -> str | None:
        status, body = http(base_url + master, timeout=5)
        uri = pick_variant(body.decode()) if status == 200 else None
        return resolve(master, uri) if uri else None

    playlist = wait(variant, 60, f"{master}")
    wait(lambda: (parsed := media_playlist(base_url, playlist)) and len(parsed[2]) >= 4,
         60, f"4 segments in {playlist}")
    return master, playlist


def run_players(args: argparse.Namespace, host: str, port: int, master: str) -> dict[str, Any]:
    """Start the player processes; returns their merged figures and the window's times."""
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3.0  # the processes start and import meanwhile
    measure_from = start + args.ramp + args.warmup
    end = measure_from + args.seconds
    pipes, processes = [], []
    for k in range(args.processes):
        receive, send = context.Pipe(duplex=False)
        cfg = {"host": host, "port": port, "master_path": master, "indices": range(k, args.viewers,
               args.processes), "total": args.viewers, "start": start, "ramp": args.ramp,
               "measure_from": measure_from, "end": end, "nice": args.nice}
        process = context.Process(target=player_process, args=(cfg, send), daemon=True)
        process.start()
        send.close()
        pipes.append(receive)
        processes.append(process)
    return {"pipes": pipes, "processes": processes, "start": start, "measure_from": measure_from,
            "end": end}


def collect(run: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {"errors": {}, "counts": {}, "cpu": 0.0, "playing": 0}
    arrays = {"segment_times": "d", "headroom": "d", "playlist_seen": "d", "playlist_newest": "q",
              "lag": "d"}
    for name, code in arrays.items():
        merged[name] = array(code)
    for pipe, process in zip(run["pipes"], run["processes"], strict=True):
        result = pipe.recv()
        process.join()
        if "crash" in result:
            raise SystemExit(f"a player process crashed: {result['crash']}")
        for key in ("errors", "counts"):
            for name, value in result[key].items():
                merged[key][name] = merged[key].get(name, 0) + value
        for name in arrays:
            merged[name].frombytes(result[name])
        merged["cpu"] += result["cpu"]
        merged["playing"] += result["playing"]
    return merged


def playlist_ages(results: dict[str, Any], written: dict[int, float], lo: float,
                  hi: float) -> tuple[list[float], int]:
    """Ages of the playlists that arrived in [lo, hi]; and how many had no known write time."""
    if not written:  # first seen by any player, over the whole run
        for seen, newest in zip(results["playlist_seen"], results["playlist_newest"], strict=True):
            if seen < written.get(newest, float("inf")):
                written[newest] = seen
    ages, unknown = [], 0
    for seen, newest in zip(results["playlist_seen"], results["playlist_newest"], strict=True):
        if lo <= seen <= hi:
            if newest in written:
                ages.append(seen - written[newest])
            else:
                unknown += 1
    return ages, unknown


def machine_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How busy the whole machine was between two machine_busy() readings, % of one core."""
    return (after[0] - before[0]) / max(1, after[1] - before[1]) * 100 * multiprocessing.cpu_count()


def ms(values: Any, p: float) -> str:
    return f"{percentile(values, p) * 1000:.1f}"


def report(args: argparse.Namespace, run: dict[str, Any], results: dict[str, Any],
           watcher: PlaylistWatcher | None, origin: dict[str, int] | None,
           cpu: dict[str, float], busy: float, segment: tuple[float, int]) -> bool:
    seconds = run["end"] - run["measure_from"]
    counts, errors = results["counts"], results["errors"]
    written = dict(watcher.written) if watcher else {}
    ages, unknown = playlist_ages(results, written, run["measure_from"], run["end"])
    if watcher:
        produced = sum(1 for t in watcher.written.values() if run["start"] <= t <= run["end"])
    else:
        newest = results["playlist_newest"]
        produced = max(newest) - min(newest) if newest else 0
    times, headroom = results["segment_times"], results["headroom"]
    # A cache that expires on whole seconds serves ages that depend on when, within the second,
    # the origin writes: so that phase is printed too.
    phase = percentile([t % 1 for t in written.values()], 50) if watcher else 0.0
    error_total = sum(errors.values())
    rate = counts.get("bytes", 0) / (run["end"] - run["start"])
    requests = sum(counts.get(k, 0) for k in ("masters", "playlists", "segments"))
    kbits = segment[1] * 8 / segment[0] / 1000
    print(f"\n# SF HLS viewers: {args.viewers} players in {args.processes} processes (nice {args.nice}),"
          f" ramp {args.ramp:.0f} s + warm-up {args.warmup:.0f} s, measured "
          f"{seconds:.0f} s; 480p rung: {segment[0]:.2f} s segments, ~{kbits:.0f} kbit/s")
    rows = [
        ("players playing at the end", f"{results['playing']} / {args.viewers}"),
        ("requests (whole run)", f"master {counts.get('masters', 0)}, playlists "
         f"{counts.get('playlists', 0)}, segments {counts.get('segments', 0)}"),
        ("errors (whole run)", f"{error_total}" + "".join(f"; {k}: {v}" for k, v in sorted(errors.items()))),
        ("segment download ms", f"p50 {ms(times, 50)}  p95 {ms(times, 95)}  p99 {ms(times, 99)}  "
         f"max {max(times, default=float('nan')) * 1000:.1f}  (n={len(times)})"),
        ("stalls (whole run)", f"{counts.get('stalls', 0)} "
         f"({counts.get('stalled ms', 0) / 1000:.1f} s frozen); "
         f"segments skipped {counts.get('segments skipped (left the window)', 0)}, "
         f"given up {counts.get('segments given up', 0)}"),
        ("buffer at segment arrival s", f"p1 {percentile(headroom, 1):.2f}  "
         f"p50 {percentile(headroom, 50):.2f}  min {min(headroom, default=float('nan')):.2f}"),
        ("playlist age s", f"p50 {percentile(ages, 50):.2f}  p99 {percentile(ages, 99):.2f}  "
         f"max {max(ages, default=float('nan')):.2f}  (n={len(ages)}, "
         + (f"written: playlist mtime at the origin, {phase:.2f} s past each second" if watcher
            else "first seen by a player: lower bound")
         + (f", {unknown} unknown)" if unknown else ")")),
        ("throughput", f"{rate / 1e6:.1f} MB/s, {requests / (run['end'] - run['start']):.0f} req/s"),
    ]
    if origin is not None and produced:
        total = sum(origin.values())
        rows.append(("origin /hls/ requests", f"{total / produced:.1f} per segment (playlists "
                     f"{origin['playlists'] / produced:.1f}, segments {origin['segments'] / produced:.1f}"
                     f" of which 304 {origin['segments 304'] / produced:.1f}) over {produced} segments"))
    else:
        rows.append(("origin /hls/ requests", "n/a (--url: the origin's access log is not ours)"))
    edge = "edge nginx workers" if "edge nginx workers" in cpu else "media nginx workers"
    generator = results["cpu"] / seconds * 100
    if cpu:
        rows.append(("edge CPU (public port)", f"{cpu.get(edge, 0):.0f}% of one core ({edge})"))
        ordered = sorted(cpu.items(), key=lambda kv: -kv[1])
        rows.append(("platform CPU", ", ".join(f"{k} {v:.0f}%" for k, v in ordered if v >= 0.5)))
    lag = results["lag"]
    rows.append(("players' CPU", f"{generator:.0f}% of one core; their loop late by p99 {ms(lag, 99)} ms, "
                 f"max {max(lag, default=0) * 1000:.0f} ms"))
    ours = sum(cpu.values()) + generator
    rows.append(("machine CPU", f"{busy:.0f}% of {100 * (multiprocessing.cpu_count())}%"
                 + (f" (others {max(0.0, busy - ours):.0f}%)" if cpu else "")))
    for name, value in rows:
        print(f"{name:<30} {value}")
    checks = [
        (f"{args.viewers} players playing", results["playing"] == args.viewers),
        ("0 errors", error_total == 0),
        (f"p99 segment download <= {SEGMENT_P99_TARGET * 1000:.0f} ms",
         percentile(times, 99) <= SEGMENT_P99_TARGET),
        ("no player stalled", counts.get("stalls", 0) == 0
         and counts.get("segments skipped (left the window)", 0) == 0),
        (f"playlist age p99 <= {PLAYLIST_AGE_P99_TARGET} s", percentile(ages, 99) <= PLAYLIST_AGE_P99_TARGET),
    ]
    passed = all(ok for _, ok in checks)
    print("verdict: " + ("PASS" if passed else "FAIL") + " — "
          + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks))
    if percentile(lag, 99) > 0.05 or busy > 95 * multiprocessing.cpu_count():
        print("caution: the players' event loop ran late or the machine was saturated: the generator "
              "may be part of the figures (see players' CPU and machine CPU)")
    return passed


def capacity(args: argparse.Namespace, base_url: str, playlist: str, roots: list[int]) -> None:
    if not shutil.which("h2load"):
        print(f"capacity: {H2LOAD_MISSING}")
        return
    work = Path(tempfile.mkdtemp(prefix="sf-hlsbench-h2load-"))
    print(f"\n# capacity: h2load --h1 --rps (open loop: 10/s per connection, 5 staggered h2load per kind), "
          f"{args.step_seconds:.0f} s per rate, half the "
          "rate on the media playlist, half on its two newest segments")
    print(f"{'target/s':>9} {'achieved/s':>10} {'errors':>6} {'playlist p50/p99 ms':>20} "
          f"{'segment p50/p99/max ms':>24} {'edge CPU':>9} {'machine':>8}")
    best = None
    for rate in args.rates:
        parsed = media_playlist(base_url, playlist)
        if not parsed:
            print("the media playlist is gone")
            break
        segments = [path.decode() for _, path in parsed[2][-2:]]
        for path in segments:  # in the edge's cache first: the step measures serving, not one fill
            http(base_url + path)
        before, busy0, t0 = tree_cpu(roots), machine_busy(), time.monotonic()
        step = h2load_step(base_url, {f"playlist-{rate:.0f}": [playlist], f"segment-{rate:.0f}": segments},
                           rate / 2, args.step_seconds, work)
        elapsed = time.monotonic() - t0
        cpu = cpu_by_label(before, tree_cpu(roots), elapsed)
        busy = machine_percent(busy0, machine_busy())
        pl, sg = step[f"playlist-{rate:.0f}"], step[f"segment-{rate:.0f}"]
        edge = cpu.get("edge nginx workers", cpu.get("media nginx workers", float("nan")))
        achieved, errors = pl["achieved"] + sg["achieved"], pl["errors"] + sg["errors"]
        print(f"{rate:>9.0f} {achieved:>10.0f} {errors:>6} {pl['p50'] * 1000:>9.1f}/{pl['p99'] * 1000:<10.1f}"
              f" {sg['p50'] * 1000:>8.1f}/{sg['p99'] * 1000:.1f}/{sg['max'] * 1000:<8.1f} {edge:>8.0f}% "
              f"{busy:>7.0f}%")
        ok = (errors == 0 and max(pl["p99"], sg["p99"]) <= SEGMENT_P99_TARGET and achieved >= 0.95 * rate)
        if not ok:
            break
        best = rate
    print(f"capacity: {best or 0:.0f} requests/s held (0 errors, p99 <= {SEGMENT_P99_TARGET * 1000:.0f} ms, "
          "achieved >= 95% of the target rate)")
    if args.keep:
        log(f"kept h2load logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--viewers", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30, help="measured window")
    parser.add_argument("--ramp", type=float, default=None, help="seconds (default N/1000, >= 5)")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--capacity", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[1000, 2000, 4000, 6000, 8000, 10000, 15000, 20000, 30000, 40000])
    parser.add_argument("--step-seconds", type=float, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the stack's logs")
    parser.add_argument("--url", help="drive this running platform instead of starting one")
    parser.add_argument("--port-base", type=int, default=None,
                        help="the stack's first port (default: 9 consecutive reserved ports)")
    args = parser.parse_args()
    args.ramp = args.ramp if args.ramp is not None else max(5.0, args.viewers / 1000)
    if args.capacity and not shutil.which("h2load"):
        raise SystemExit(H2LOAD_MISSING)
    stack = None if args.url else Stack(args.port_base)
    watcher = None
    try:
        if stack:
            log(f"starting sf dev in {stack.work} (ports {stack.http_port}..{stack.http_port + 8})")
            stack.start()
            stack.publish()
        base_url = args.url.rstrip("/") if args.url else stack.base_url  # type: ignore[union-attr]
        master, playlist = find_stream(base_url)
        parsed = media_playlist(base_url, playlist)
        assert parsed
        duration, path = parsed[2][-1]
        segment = (duration, len(http(base_url + path.decode())[1]))
        log(f"live: {master} -> {playlist}")
        roots = [p.pid for p in (stack.process, stack.publisher) if p] if stack else []
        passed = True
        if args.viewers > 0:
            if stack:
                watcher = PlaylistWatcher(stack.hls_dir / playlist.split("/hls/", 1)[1])
                watcher.start()
            access_log = stack.var / "log" / "nginx-access.log" if stack else None
            offset = access_log.stat().st_size if access_log and access_log.exists() else 0
            url = urlsplit(base_url)
            run = run_players(args, url.hostname or "127.0.0.1", url.port or 80, master)
            log(f"{args.viewers} players: ramp {args.ramp:.0f} s, warm-up {args.warmup:.0f} s, "
                f"then {args.seconds:.0f} s measured")
            time.sleep(max(0.0, run["measure_from"] - time.time()))
            before, busy0 = tree_cpu(roots), machine_busy()
            time.sleep(max(0.0, run["end"] - time.time()))
            after, busy1 = tree_cpu(roots), machine_busy()
            seconds = run["end"] - run["measure_from"]
            results = collect(run)
            time.sleep(1.5)  # nginx flushes its access log buffer every second
            origin = hls_requests(access_log, offset) if access_log else None
            busy = machine_percent(busy0, busy1)
            passed = report(args, run, results, watcher, origin,
                            cpu_by_label(before, after, seconds) if roots else {}, busy, segment)
        if args.capacity:
            capacity(args, base_url, playlist, roots)
        return 0 if passed else 1
    finally:
        if watcher:
            watcher.stopping = True
        if stack:
            stack.stop(args.keep)


if __name__ == "__main__":
    sys.exit(main())
