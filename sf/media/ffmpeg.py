"""FFmpeg for one live stream: probe the source, plan the ladder, build the command, read progress.

One process per stream pulls the local RTMP stream once, decodes once, and writes every
rendition as low-latency HLS plus a periodic thumbnail (measured in MEDIA-NOTES.md: small
probe sizes matter more to latency than anything else on the input side).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from sf.config import Config

# (video kbit/s, audio kbit/s) per rendition height.
BITRATES = {1080: (6000, 160), 720: (3000, 128), 480: (1200, 96), 360: (800, 96), 240: (400, 64)}
THUMBNAIL_HEIGHT = 360


@dataclass(frozen=True)
class SourceInfo:
    """What the publisher sends, as ffprobe saw it."""

    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str = "h264"


@dataclass(frozen=True)
class Rung:
    """One rendition of the ladder."""

    name: str
    height: int
    video_kbps: int
    audio_kbps: int
    copy: bool = False


@dataclass
class Progress:
    """The latest block of FFmpeg's `-progress` output."""

    fps: float = 0.0
    speed: float = 0.0
    bitrate_kbps: float = 0.0
    out_time_s: float = 0.0
    frame: int = 0
    raw: dict[str, str] = field(default_factory=dict)


def source_url(config: Config, stream_id: int) -> str:
    """The local RTMP play URL of a stream (play is allowed from loopback only)."""
    return f"rtmp://127.0.0.1:{config.rtmp_port}/live/{int(stream_id)}"


def probe_source(config: Config, url: str, timeout: float = 15.0) -> SourceInfo:
    """Read the source's resolution, frame rate and whether it has audio (small probe)."""
    result = subprocess.run(
        [config.ffprobe, "-v", "error", "-rw_timeout", "5000000", "-analyzeduration", "1000000",
         "-probesize", "1000000", "-show_entries", "stream=codec_type,codec_name,width,height,"
         "avg_frame_rate,r_frame_rate", "-of", "json", url],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ffprobe failed: {result.stderr.strip()[:300]}")
    streams = json.loads(result.stdout or "{}").get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None or not video.get("width"):
        raise RuntimeError("the source has no video stream")
    fps = 30.0
    for key in ("avg_frame_rate", "r_frame_rate"):
        try:
            value = float(Fraction(video.get(key, "0/1")))
        except (ValueError, ZeroDivisionError):
            value = 0.0
        if 1 <= value <= 240:
            fps = value
            break
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return SourceInfo(int(video["width"]), int(video["height"]), fps, has_audio,
                      video.get("codec_name", "h264"))


class NotCopyable(RuntimeError):
    """Source-only was asked for, but the source's video cannot be copied into HLS."""


def plan_ladder(config: Config, source: SourceInfo, passthrough: bool,
                source_only: bool = False) -> list[Rung]:
    """The configured rungs at or below the source height (never upscaled).

    A source smaller than every rung gets one rung at its own height. `source_only` (no room
    for a transcoder, see sf/services/admission.py): the copied source alone, no x264 at all;
    NotCopyable when the source is not H.264 (HLS in MPEG-TS carries H.264 only).
    """
    if source_only:
        if source.video_codec != "h264":
            raise NotCopyable(f"source-only needs an H.264 source, not {source.video_codec}")
        return [Rung("source", source.height, 0, 160, copy=True)]
    heights = [h for h in config.ladder if h <= source.height]
    if not heights:
        heights = [source.height - source.height % 2]
    rungs = []
    for height in heights:
        video, audio = BITRATES.get(height, BITRATES[min(BITRATES, key=lambda h: abs(h - height))])
        rungs.append(Rung(f"{height}p", height, video, audio))
    if passthrough and source.video_codec == "h264":
        rungs.insert(0, Rung("source", source.height, 0, 160, copy=True))
    return rungs


def build_command(config: Config, stream_id: int, source: SourceInfo, rungs: list[Rung],
                  out_dir: Path, thumbnail: Path) -> list[str]:
    """The FFmpeg argument list: ladder → HLS in `out_dir`, thumbnail → `thumbnail`."""
    segment = config.hls_segment_seconds
    gop = max(1, round(source.fps * segment))
    encoded = [r for r in rungs if not r.copy]
    splits = len(encoded) + 1
    graph = [f"[0:v]split={splits}" + "".join(f"[s{i}]" for i in range(splits))]
    for index, rung in enumerate(encoded):
        graph.append(f"[s{index}]scale=-2:{rung.height}:flags=bicubic,format=yuv420p[v{index}]")
    # select (not fps): the first frame at once, then one every interval, nothing buffered.
    graph.append(f"[s{len(encoded)}]select='isnan(prev_selected_t)+"
                 f"gte(t-prev_selected_t\\,{config.thumbnail_interval})',"
                 f"scale=-2:{min(THUMBNAIL_HEIGHT, source.height)}[thumb]")
    cmd = [
        # -y: a restarted transcoder overwrites the thumbnail its predecessor left (without
        # it FFmpeg asks, reads "no" from the closed stdin and exits: never recovering).
        config.ffmpeg, "-hide_banner", "-y", "-nostdin", "-loglevel", "warning", "-nostats",
        "-progress", "pipe:1", "-stats_period", "1",
        "-rw_timeout", "5000000", "-fflags", "nobuffer",
        "-analyzeduration", "1000000", "-probesize", "1000000",
        "-i", source_url(config, stream_id),
        "-filter_complex", ";".join(graph),
    ]
    stream_map = []
    encoded_index = 0
    for output_index, rung in enumerate(rungs):
        if rung.copy:
            cmd += ["-map", "0:v:0", f"-c:v:{output_index}", "copy"]
        else:
            kbps = rung.video_kbps
            # The profile per encoded stream: given to a copied one it fails the whole command
            # ("Unable to parse option value main"), which broke source_passthrough.
            cmd += ["-map", f"[v{encoded_index}]", f"-c:v:{output_index}", "libx264",
                    f"-profile:v:{output_index}", "main", f"-b:v:{output_index}", f"{kbps}k",
                    f"-maxrate:v:{output_index}", f"{int(kbps * 1.1)}k",
                    f"-bufsize:v:{output_index}", f"{kbps}k"]
            encoded_index += 1
        entry = f"v:{output_index}"
        if source.has_audio:
            cmd += ["-map", "0:a:0", f"-b:a:{output_index}", f"{rung.audio_kbps}k"]
            entry += f",a:{output_index}"
        stream_map.append(f"{entry},name:{rung.name}")
    if encoded:
        cmd += [
            "-preset", config.transcode_preset, "-tune", "zerolatency",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-force_key_frames", f"expr:gte(t,n_forced*{segment})",
        ]
    if source.has_audio:
        cmd += ["-c:a", "aac", "-ac", "2", "-ar", "48000"]
    cmd += [
        "-f", "hls", "-hls_time", str(segment), "-hls_list_size", str(config.hls_playlist_size),
        "-hls_delete_threshold", "2", "-hls_segment_type", "mpegts",
        "-hls_flags", "independent_segments+delete_segments+temp_file+discont_start",
        "-hls_start_number_source", "epoch",
        "-master_pl_name", "master.m3u8", "-var_stream_map", " ".join(stream_map),
        # Segment names carry a token of this run as well as the sequence number: a transcoder
        # restarted here or on another media node never reuses a name an edge may have cached.
        "-hls_segment_filename", str(out_dir / "%v" / f"seg_{secrets.token_hex(4)}_%d.ts"),
        str(out_dir / "%v" / "index.m3u8"),
        "-map", "[thumb]", "-fps_mode", "vfr", "-f", "image2", "-update", "1",
        "-atomic_writing", "1",
        "-q:v", "4", str(thumbnail),
    ]
    return cmd


def parse_progress_block(lines: list[str]) -> Progress:
    """One `-progress` block (key=value lines up to `progress=...`)."""
    raw = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep:
            raw[key] = value.strip()

    def number(key: str, suffix: str = "") -> float:
        text = raw.get(key, "").removesuffix(suffix).strip()
        try:
            return float(text)
        except ValueError:
            return 0.0

    out_time_us = number("out_time_us") or number("out_time_ms")
    return Progress(fps=number("fps"), speed=number("speed", "x"),
                    bitrate_kbps=number("bitrate", "kbits/s"), out_time_s=out_time_us / 1e6,
                    frame=int(number("frame")), raw=raw)
