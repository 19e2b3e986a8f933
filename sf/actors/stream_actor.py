"""StreamActor: supervises the FFmpeg transcoder of one live stream.

The actor owns the process. A watcher thread reads FFmpeg's progress and waits for it to exit,
then `tell`s the actor; the actor never blocks on the child inside a message (except while
stopping, on its own thread). Everything the loop must hear goes through the LoopBridge.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka

from sf.actors.bridge import LoopBridge
from sf.config import Config
from sf.media import ffmpeg, hls
from sf.media.process import die_with_parent
from sf.observability import TRANSCODER_EXITS

log = logging.getLogger("sf.actors.stream")

MAX_BACKOFF = 10.0
DEGRADED_AFTER = 5          # consecutive quick failures
STABLE_RUN_SECONDS = 15.0   # a run this long resets the failure count
HEALTH_EVERY = 2.0          # seconds between health reports to the loop


class MediaEvents(Protocol):
    """What the loop side offers the actors (coroutines run on the loop through the bridge)."""

    async def on_thumbnail(self, stream_id: int, url: str) -> None: ...

    async def on_health(self, stream_id: int, health: dict[str, Any]) -> None: ...

    async def on_not_copyable(self, stream_id: int, reason: str) -> None: ...


# --- messages ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessExited:
    generation: int
    returncode: int
    runtime: float


@dataclass(frozen=True)
class ProgressReport:
    generation: int
    progress: ffmpeg.Progress


@dataclass(frozen=True)
class Restart:
    generation: int


@dataclass(frozen=True)
class SetPrivate:
    private: bool


@dataclass(frozen=True)
class GetHealth:
    """Ask for the health dict; the reply completes `future` on the loop through the bridge."""

    future: Any


@dataclass
class Health:
    """What the node knows about a transcoder (reported to statistics and metrics)."""

    state: str = "starting"          # starting | running | restarting | degraded | stopped
    pid: int | None = None
    restarts: int = 0
    consecutive_failures: int = 0
    fps: float = 0.0
    speed: float = 0.0
    bitrate_kbps: float = 0.0
    out_time_s: float = 0.0          # media time transcoded by the current process
    progress_at: float = 0.0         # wall clock of the progress report out_time_s comes from
    source: dict[str, Any] = field(default_factory=dict)
    renditions: list[str] = field(default_factory=list)
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class StreamActor(pykka.ThreadingActor):
    """One live stream on this node: runs, restarts (with backoff) and stops its FFmpeg."""

    def __init__(self, stream_id: int, config: Config, bridge: LoopBridge, events: MediaEvents,
                 private: bool, passthrough: bool, thumbnail_name: str,
                 source_only: bool = False) -> None:
        super().__init__()
        self.stream_id = stream_id
        self.config = config
        self.bridge = bridge
        self.events = events
        self.private = private
        self.passthrough = passthrough
        self.source_only = source_only  # no room for a transcoder: the copied source alone
        self.out_dir = hls.hls_dir_for(config.media_dir, stream_id)
        self.thumbnail_path = hls.thumbnails_dir(config.media_dir) / thumbnail_name
        self.thumbnail_name = thumbnail_name
        self.health = Health()
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.started_at = 0.0
        self.stopping = False
        self._thumbnail_mtime = 0.0
        self._last_health = 0.0
        self._timer: threading.Timer | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def on_start(self) -> None:
        log.info("stream %s: actor started", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_started"})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.thumbnail_path.parent.mkdir(parents=True, exist_ok=True)
        hls.set_private_marker(self.config.media_dir, self.stream_id, self.private)
        hls.set_live_marker(self.config.media_dir, self.stream_id, True)
        self._spawn()

    def on_stop(self) -> None:
        self.stopping = True
        if self._timer:
            self._timer.cancel()
        self._terminate()
        self.health.state = "stopped"
        self._report_health(force=True)
        log.info("stream %s: actor stopped", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_stopped",
                        "restarts": self.health.restarts})

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.stopping = True
        self._terminate()
        # pykka logs the traceback at ERROR itself; this line only names the stream.
        log.warning("stream %s: actor failed (%s)", self.stream_id, exception_type.__name__,
                    extra={"stream_id": self.stream_id, "event": "actor_failed"})

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ProcessExited):
            self._on_exit(message)
        elif isinstance(message, ProgressReport):
            self._on_progress(message)
        elif isinstance(message, Restart):
            if message.generation == self.generation and not self.stopping:
                self._spawn()
        elif isinstance(message, SetPrivate):
            self.private = message.private
            hls.set_private_marker(self.config.media_dir, self.stream_id, message.private)
        elif isinstance(message, GetHealth):
            self.bridge.resolve(message.future, self.health.as_dict())
        return None

    # --- the child process ---------------------------------------------------------------------

    def _spawn(self) -> None:
        """Probe the source and start FFmpeg; a failure counts as an exit (and is retried)."""
        self.generation += 1
        generation = self.generation
        self.started_at = time.monotonic()
        try:
            source = ffmpeg.probe_source(self.config, ffmpeg.source_url(self.config, self.stream_id))
            rungs = ffmpeg.plan_ladder(self.config, source, self.passthrough, self.source_only)
            command = ffmpeg.build_command(self.config, self.stream_id, source, rungs,
                                           self.out_dir, self.thumbnail_path)
            for rung in rungs:
                (self.out_dir / rung.name).mkdir(parents=True, exist_ok=True)
            log_path = self.config.var_dir / "log" / f"ffmpeg-{self.stream_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as stderr:
                self.process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=die_with_parent)
        except ffmpeg.NotCopyable as exc:
            # Retrying cannot help: the loop ends the stream (which stops this actor).
            self.health.last_error = str(exc)[:300]
            self.health.state = "stopped"
            self.bridge.submit(self.events.on_not_copyable, self.stream_id, str(exc))
            return
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            self.health.last_error = str(exc)[:300]
            self.actor_ref.tell(ProcessExited(generation, -1, 0.0))
            return
        self.health.source = {"width": source.width, "height": source.height,
                              "fps": round(source.fps, 2), "audio": source.has_audio}
        self.health.renditions = [rung.name for rung in rungs]
        self.health.pid = self.process.pid
        failures = self.health.consecutive_failures
        # Degraded stays degraded through its retries until a stable run clears it (in
        # _on_progress), so the metric and its alert do not flicker with each attempt.
        self.health.state = ("running" if failures == 0 else
                             "degraded" if failures >= DEGRADED_AFTER else "restarting")
        log.info("stream %s: ffmpeg started (pid %s, %s)", self.stream_id, self.process.pid,
                 ",".join(self.health.renditions),
                 extra={"stream_id": self.stream_id, "event": "ffmpeg_started",
                        "pid": self.process.pid, "generation": generation})
        threading.Thread(target=self._watch, args=(self.process, generation),
                         name=f"ffmpeg-watch-{self.stream_id}", daemon=True).start()

    def _watch(self, process: subprocess.Popen[bytes], generation: int) -> None:
        """Watcher thread: forward progress blocks, then report the exit."""
        started = time.monotonic()
        block: list[str] = []
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace")
            block.append(line)
            if line.startswith("progress="):
                try:
                    self.actor_ref.tell(ProgressReport(generation, ffmpeg.parse_progress_block(block)))
                except pykka.ActorDeadError:
                    pass  # stopping: keep draining so FFmpeg never blocks on a full pipe
                block = []
        returncode = process.wait()
        try:
            self.actor_ref.tell(ProcessExited(generation, returncode, time.monotonic() - started))
        except pykka.ActorDeadError:
            pass

    def _on_exit(self, message: ProcessExited) -> None:
        if message.generation != self.generation or self.stopping:
            return
        self.process = None
        self.health.pid = None
        if message.runtime >= STABLE_RUN_SECONDS:
            self.health.consecutive_failures = 0
        self.health.consecutive_failures += 1
        self.health.restarts += 1
        failures = self.health.consecutive_failures
        self.health.state = "degraded" if failures >= DEGRADED_AFTER else "restarting"
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))
        TRANSCODER_EXITS.inc()
        log.warning("stream %s: ffmpeg exited with %s after %.1fs; restart #%s in %.1fs",
                    self.stream_id, message.returncode, message.runtime, self.health.restarts, delay,
                    extra={"stream_id": self.stream_id, "event": "ffmpeg_exited",
                           "returncode": message.returncode, "runtime_s": round(message.runtime, 1),
                           "restarts": self.health.restarts, "restart_in_s": delay,
                           "error": self.health.last_error or None})
        if failures == DEGRADED_AFTER:  # once, as it tips over: an alert-worthy event
            log.error("stream %s: transcoder degraded after %s quick failures in a row",
                      self.stream_id, failures,
                      extra={"stream_id": self.stream_id, "event": "ffmpeg_degraded"})
        self._report_health(force=True)
        generation = self.generation
        self._timer = threading.Timer(delay, self._tell_restart, args=(generation,))
        self._timer.daemon = True
        self._timer.start()

    def _tell_restart(self, generation: int) -> None:
        try:
            self.actor_ref.tell(Restart(generation))
        except pykka.ActorDeadError:
            pass

    def _on_progress(self, message: ProgressReport) -> None:
        if message.generation != self.generation:
            return
        progress = message.progress
        self.health.fps, self.health.speed = progress.fps, progress.speed
        self.health.bitrate_kbps = progress.bitrate_kbps
        self.health.out_time_s = progress.out_time_s
        self.health.progress_at = time.time()
        if time.monotonic() - self.started_at > STABLE_RUN_SECONDS:
            self.health.consecutive_failures = 0
            self.health.state = "running"
        self._check_thumbnail()
        self._report_health()

    def _check_thumbnail(self) -> None:
        try:
            mtime = self.thumbnail_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._thumbnail_mtime:
            self._thumbnail_mtime = mtime
            url = hls.thumbnail_url(self.thumbnail_name, int(mtime * 1000))
            self.bridge.submit(self.events.on_thumbnail, self.stream_id, url)

    def _report_health(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_health >= HEALTH_EVERY:
            self._last_health = now
            self.bridge.submit(self.events.on_health, self.stream_id, self.health.as_dict())

    def _terminate(self) -> None:
        """Stop FFmpeg and its process group: SIGTERM, then SIGKILL after 5 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
