"""Simulated hls.js players for bench/hls.py: one process's share of the viewers.

Each player holds one keep-alive HTTP/1.1 connection (from a source address of its own in
127.1.0.0/16, as distinct viewers would), GETs the master playlist once, picks the 480p media
playlist and then behaves like hls.js on a live stream:

- reloads the media playlist one (average) segment duration after the previous reload was
  sent, half that when the playlist had not changed (hls.js `computeReloadInterval`);
- starts 3 segments back from the live edge and fetches every new segment once, one at a time,
  in order (a reload due while a segment downloads waits for it: one connection);
- keeps a simulated buffer: playback starts when the first segment arrives, each segment adds
  its #EXTINF duration. A segment that arrives after the buffer ran out is a *stall* (the
  picture froze); playback then resumes from that segment's arrival.

So that thousands of players cost little CPU, each is a non-blocking socket watched by the
asyncio loop (add_reader, no transports or streams) speaking hand-written HTTP/1.1: answers are
received into one shared buffer, playlists kept, and a segment's body past its first read is
received with MSG_TRUNC, which TCP drops in the kernel without copying it to us (the server and
the kernel's loopback still carry every byte).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import posixpath
import resource
import socket
import time
from array import array
from typing import Any

MASTER, PLAYLIST, SEGMENT = "master", "playlist", "segment"
TIMEOUT = 10.0           # hls.js: manifest and level loading time out after 10 s
SEGMENT_ATTEMPTS = 3     # a failed segment is retried this often (0.5 s apart), then skipped
LIVE_START_SEGMENTS = 3  # hls.js liveSyncDurationCount
RECV_SIZE = 256 * 1024
DISCARD_SIZE = 4 * 1024 * 1024


def source_address(index: int) -> str:
    """Player `index`'s own loopback source address (nginx limits requests per address)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def pick_variant(master: str, height: int = 480) -> str | None:
    """The URI of the `height`p variant of a master playlist (else the first variant)."""
    variants: list[tuple[str, str]] = []
    attributes = None
    for line in master.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            attributes = line
        elif line and not line.startswith("#") and attributes is not None:
            variants.append((attributes, line))
            attributes = None
    for attributes, uri in variants:
        if f"x{height}," in attributes + "," or f"{height}p" in uri:
            return uri
    return variants[0][1] if variants else None


def resolve(base: str, uri: str) -> str:
    """A playlist URI as a path on the same host (relative to the playlist's own path)."""
    if "://" in uri:
        uri = "/" + uri.split("://", 1)[1].split("/", 1)[1]
    return uri if uri.startswith("/") else posixpath.join(posixpath.dirname(base), uri)


def parse_media(base: str, text: str) -> tuple[int, float, list[tuple[float, bytes]]]:
    """(media sequence, average segment duration, [(duration, request line prefix)])."""
    sequence, duration, segments = 0, 0.0, []
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line and not line.startswith("#"):
            segments.append((duration, resolve(base, line.strip()).encode()))
    average = sum(d for d, _ in segments) / len(segments) if segments else 1.0
    return sequence, average, segments


class Generator:
    """One process's players and their shared counters."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = cfg["host"], cfg["port"]
        self.host_header = f"Host: {self.host}:{self.port}\r\nUser-Agent: sf-hlsbench\r\n\r\n".encode()
        self.master_path: str = cfg["master_path"]
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.sink = bytearray(DISCARD_SIZE)  # never written: MSG_TRUNC only sizes against it
        offset = time.time() - self.loop.time()  # wall clock = loop clock + offset
        self.offset = offset
        self.measure_from = cfg["measure_from"] - offset
        self.stopping = False
        self.parsed: dict[tuple[str, bytes], tuple[int, float, list[tuple[float, bytes]]]] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.segment_times = array("d")      # request sent -> last byte, seconds (steady window)
        self.headroom = array("d")           # buffered content left when a segment arrived
        self.playlist_seen = array("d")      # wall time a playlist arrived ...
        self.playlist_newest = array("q")    # ... and the newest media sequence it listed
        self.lag = array("d")                # event loop lateness of a 50 ms ticker
        self.players: list[Player] = []

    def error(self, kind: str, what: str) -> None:
        self.errors[f"{what} {kind}"] += 1

    def parse(self, base: str, body: bytes) -> tuple[int, float, list[tuple[float, bytes]]]:
        key = (base, body)
        parsed = self.parsed.get(key)
        if parsed is None:
            if len(self.parsed) > 64:
                self.parsed.clear()
            parsed = self.parsed[key] = parse_media(base, body.decode("utf-8", "replace"))
        return parsed

    def sweep(self) -> None:
        """Time out requests in flight for longer than TIMEOUT."""
        now = self.loop.time()
        for player in self.players:
            if player.kind is not None and now - player.sent_at > TIMEOUT:
                kind, player.kind = player.kind, None
                self.error("timeout", kind)
                player.close()
                player.failed(kind)
            elif player.connecting and now - player.connect_started > TIMEOUT:
                player.close()
                self.error("connect (timeout)", "connection")
                player.pause(1.0)
        if not self.stopping:
            self.loop.call_later(1.0, self.sweep)

    def tick(self, due: float) -> None:
        now = self.loop.time()
        if now >= self.measure_from:
            self.lag.append(now - due)
        if not self.stopping:
            self.loop.call_at(due + 0.05, self.tick, due + 0.05)


class Player:
    def __init__(self, gen: Generator, index: int) -> None:
        self.gen, self.index = gen, index
        self.source = (source_address(index), 0)
        self.sock: socket.socket | None = None
        self.connecting = False
        self.connect_started = 0.0
        self.paused = False
        self.kind: str | None = None      # the request in flight
        self.sent_at = 0.0
        self.playlist_path: str | None = None
        self.playlist_sent_at = 0.0
        self.want_playlist = False
        self.queue: collections.deque[tuple[int, float, bytes]] = collections.deque()
        self.next_sequence: int | None = None
        self.newest = -1
        self.attempts = 0
        self.buffer_end: float | None = None
        self.last_segment_at = 0.0
        self._reset_response()

    def _reset_response(self) -> None:
        self.head = bytearray()
        self.in_body = False
        self.discard = False  # a segment's body: received and thrown away in the kernel
        self.remaining = 0
        self.status = 0
        self.close_after = False
        self.chunked = False
        self.body = bytearray()

    # --- requests --------------------------------------------------------------------------

    def start(self) -> None:
        self.gen.counts["players started"] += 1
        self.pump()

    def pump(self) -> None:
        """Send the next request if none is in flight."""
        if self.kind is not None or self.paused or self.gen.stopping:
            return
        if self.playlist_path is None:
            kind, path = MASTER, self.gen.master_path.encode()
        elif self.want_playlist:
            kind, path = PLAYLIST, self.playlist_path.encode()
        elif self.queue:
            kind, path = SEGMENT, self.queue[0][2]
        else:
            return
        if self.sock is None or self.connecting:
            if self.sock is None:
                self.connect()
            return
        if kind == PLAYLIST:
            self.want_playlist = False
            self.playlist_sent_at = self.gen.loop.time()
        self.kind = kind
        self._reset_response()
        self.sent_at = self.gen.loop.time()
        try:
            self.sock.send(b"GET " + path + b" HTTP/1.1\r\n" + self.gen.host_header)
        except OSError as error:  # the server closed the idle connection meanwhile
            self.lost(error)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind(self.source)
            code = sock.connect_ex((self.gen.host, self.gen.port))
        except OSError as error:
            code = error.errno or -1
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.gen.error(f"connect ({os.strerror(code)})", "connection")
            self.pause(1.0)
            return
        self.sock, self.connecting = sock, True
        self.connect_started = self.gen.loop.time()
        self.gen.loop.add_writer(sock.fileno(), self.connected)

    def connected(self) -> None:
        assert self.sock is not None
        self.gen.loop.remove_writer(self.sock.fileno())
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.connecting = False
        if code:
            self.sock.close()
            self.sock = None
            self.gen.error(f"connect ({os.strerror(code)})", "connection")
            self.pause(1.0)
            return
        self.gen.counts["connections"] += 1
        self.gen.loop.add_reader(self.sock.fileno(), self.readable)
        self.pump()

    def close(self) -> None:
        if self.sock is not None:
            fd = self.sock.fileno()
            self.gen.loop.remove_writer(fd) if self.connecting else self.gen.loop.remove_reader(fd)
            self.sock.close()
            self.sock, self.connecting = None, False

    def lost(self, error: OSError | None) -> None:
        """The connection failed or the server closed it."""
        self.close()
        if self.kind is not None and not self.gen.stopping:
            kind, self.kind = self.kind, None
            self.gen.error("reset" if error else "closed", kind)
            self.failed(kind)

    def pause(self, seconds: float) -> None:
        self.paused = True
        self.gen.loop.call_later(seconds, self.resume)

    def resume(self) -> None:
        self.paused = False
        self.pump()

    def reload(self) -> None:
        self.want_playlist = True
        self.pump()

    def failed(self, kind: str) -> None:
        """hls.js retries: playlists after a second, a segment a few times, then skips it."""
        if kind == PLAYLIST:
            self.gen.loop.call_later(1.0, self.reload)
        elif kind == SEGMENT:
            self.attempts += 1
            if self.attempts >= SEGMENT_ATTEMPTS:
                self.queue.popleft()
                self.attempts = 0
                self.gen.counts["segments given up"] += 1
            self.pause(0.5)
        else:
            self.pause(1.0)

    # --- answers -----------------------------------------------------------------------------

    def readable(self) -> None:
        sock = self.sock
        assert sock is not None
        gen = self.gen
        try:
            if self.discard:
                # MSG_TRUNC: TCP drops the bytes without copying them to us (tcp(7)).
                nbytes = sock.recv_into(gen.sink, min(self.remaining, DISCARD_SIZE), socket.MSG_TRUNC)
            else:
                nbytes = sock.recv_into(gen.buffer)
        except BlockingIOError:
            return
        except OSError as error:
            self.lost(error)
            return
        if nbytes == 0:
            self.lost(None)
            return
        gen.counts["bytes"] += nbytes
        if self.kind is None:
            gen.error("unexpected data", "connection")
            self.close()
            return
        if self.discard:
            self.remaining -= nbytes
            if self.remaining <= 0:
                self._complete()
            return
        start = 0
        if not self.in_body:
            if self.head:
                self.head += gen.view[:nbytes]
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                header, data = bytes(self.head[:end]), bytes(self.head[end + 4:])
                self._header(header)
                self._body(data, 0, len(data))
                return
            end = gen.buffer.find(b"\r\n\r\n", 0, nbytes)
            if end < 0:
                self.head += gen.view[:nbytes]
                return
            self._header(bytes(gen.view[:end]))
            start = end + 4
        self._body(gen.view, start, nbytes)

    def _header(self, header: bytes) -> None:
        self.in_body = True
        try:
            self.status = int(header[9:12])
        except ValueError:
            self.status = 0
        low = header.lower()
        at = low.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = low.find(b"\r\n", at + 2)
            self.remaining = int(low[at + 17:line_end if line_end > 0 else None])
        self.chunked = b"\r\ntransfer-encoding: chunked" in low
        self.close_after = b"\r\nconnection: close" in low

    def _body(self, data: Any, start: int, end: int) -> None:
        if self.chunked:
            self.body += data[start:end]
            decoded = dechunk(self.body)
            if decoded is not None:
                self.body = bytearray(decoded)
                self._complete()
            return
        if self.kind != SEGMENT:
            self.body += data[start:end]
        self.remaining -= end - start
        if self.remaining <= 0:
            self._complete()
        elif self.kind == SEGMENT:
            self.discard = True

    def _complete(self) -> None:
        gen, kind = self.gen, self.kind
        assert kind is not None
        now = gen.loop.time()
        self.kind = None
        if self.close_after:
            self.close()  # the server ends the connection: a new one for the next request
        if self.remaining < 0:
            gen.error("longer than Content-Length", kind)
        gen.counts[kind + "s"] += 1
        if self.status != 200:
            gen.error(f"status {self.status}", kind)
            self.failed(kind)
        elif kind == MASTER:
            variant = pick_variant(self.body.decode("utf-8", "replace"))
            if variant is None:
                gen.error("no variant", kind)
                self.failed(kind)
            else:
                self.playlist_path = resolve(gen.master_path, variant)
                self.want_playlist = True
        elif kind == PLAYLIST:
            self._playlist(now)
        else:
            self._segment(now)
        self.pump()

    def _playlist(self, now: float) -> None:
        gen = self.gen
        assert self.playlist_path is not None
        sequence, average, segments = gen.parse(self.playlist_path, bytes(self.body))
        newest = sequence + len(segments) - 1
        gen.playlist_seen.append(now + gen.offset)
        gen.playlist_newest.append(newest)
        changed = newest > self.newest
        if self.next_sequence is None:
            self.next_sequence = sequence + max(0, len(segments) - LIVE_START_SEGMENTS)
        # Queued segments that have left the window are gone: skip them, as hls.js would jump.
        while self.queue and self.queue[0][0] < sequence:
            self.queue.popleft()
            gen.counts["segments skipped (left the window)"] += 1
        wanted = max(self.next_sequence, self.queue[-1][0] + 1 if self.queue else 0)
        if wanted < sequence:
            gen.counts["segments skipped (left the window)"] += sequence - wanted
            wanted = sequence
        for seq in range(wanted, newest + 1):
            duration, path = segments[seq - sequence]
            self.queue.append((seq, duration, path))
        if newest >= wanted:
            self.next_sequence = newest + 1
        self.newest = max(self.newest, newest)
        interval = average if changed else average / 2
        gen.loop.call_at(max(now, self.playlist_sent_at + interval), self.reload)

    def _segment(self, now: float) -> None:
        gen = self.gen
        _, duration, _ = self.queue.popleft()
        self.attempts = 0
        self.last_segment_at = now
        steady = now >= gen.measure_from
        if steady:
            gen.segment_times.append(now - self.sent_at)
        if self.buffer_end is None:
            self.buffer_end = now + duration  # playback starts with the first segment
            return
        headroom = self.buffer_end - now
        if steady:
            gen.headroom.append(headroom)
        if headroom < 0:
            gen.counts["stalls"] += 1
            gen.counts["stalled ms"] += int(-headroom * 1000)
            self.buffer_end = now + duration
        else:
            self.buffer_end += duration


def dechunk(raw: bytearray) -> bytes | None:
    """The body of a complete chunked transfer coding, None while incomplete."""
    out, pos = bytearray(), 0
    while True:
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(raw[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(out) if raw.find(b"\r\n", line_end + 2) >= 0 else None
        if len(raw) < line_end + 2 + size + 2:
            return None
        out += raw[line_end + 2:line_end + 2 + size]
        pos = line_end + 2 + size + 2


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_players(cfg: dict[str, Any]) -> dict[str, Any]:
    gen = Generator(cfg)
    loop = gen.loop
    total, ramp = cfg["total"], cfg["ramp"]
    for index in cfg["indices"]:
        player = Player(gen, index)
        gen.players.append(player)
        loop.call_at(cfg["start"] - gen.offset + ramp * index / max(1, total), player.start)
    loop.call_later(1.0, gen.sweep)
    first = loop.time() + 0.05
    loop.call_at(first, gen.tick, first)
    marks = {"start": cpu_seconds()}  # the generator's own CPU over the measured window
    loop.call_at(gen.measure_from, lambda: marks.__setitem__("measure", cpu_seconds()))
    await asyncio.sleep(max(0.0, cfg["end"] - time.time()))
    gen.stopping = True
    cpu = cpu_seconds() - marks.get("measure", marks["start"])
    playing = sum(1 for p in gen.players if p.last_segment_at > loop.time() - 3.0)
    for player in gen.players:
        player.close()
    await asyncio.sleep(0.1)
    return {
        "errors": dict(gen.errors), "counts": dict(gen.counts),
        "segment_times": gen.segment_times.tobytes(), "headroom": gen.headroom.tobytes(),
        "playlist_seen": gen.playlist_seen.tobytes(), "playlist_newest": gen.playlist_newest.tobytes(),
        "lag": gen.lag.tobytes(),
        "cpu": cpu,
        "playing": playing,  # at the end: a segment arrived within the last 3 s
    }


def player_process(cfg: dict[str, Any], conn: Any) -> None:
    """multiprocessing target: run this share of the players, send the figures back."""
    if cfg.get("nice"):
        os.nice(cfg["nice"])
    try:
        conn.send(asyncio.run(run_players(cfg)))
    except BaseException as error:  # the parent prints it: a silent child hides a broken run
        conn.send({"crash": repr(error)})
        raise
    finally:
        conn.close()
