"""Where a stream's HLS and thumbnails live, and how playback URLs are formed and signed."""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
import time
from pathlib import Path

PRIVATE_MARKER = ".private"
LIVE_MARKER = ".live"  # this node holds the stream's current playlists: nginx serves them


def hls_dir_for(media_dir: Path, stream_id: int) -> Path:
    """`<media>/hls/<stream id>`: master.m3u8, one folder per rendition, segments."""
    return media_dir / "hls" / str(int(stream_id))


def thumbnails_dir(media_dir: Path) -> Path:
    return media_dir / "thumbnails"


def new_thumbnail_name(stream_id: int) -> str:
    """An unguessable file name, so a private stream's picture cannot be fetched by id."""
    return f"{int(stream_id)}-{secrets.token_urlsafe(12)}.jpg"


THUMBNAILS_URL_PREFIX = "/media/thumbnails/"


def thumbnail_url(name: str, version: int) -> str:
    """Public URL of a thumbnail with a cache-busting version."""
    return f"{THUMBNAILS_URL_PREFIX}{name}?v={version}"


def sign_playback(stream_id: int, secret: str, ttl: int, now: float | None = None) -> str:
    """`/hls/<id>/<expires>-<sig>/master.m3u8`, checked by nginx's secure_link."""
    expires = int((now or time.time()) + ttl)
    return f"/hls/{int(stream_id)}/{expires}-{_signature(expires, stream_id, secret)}/master.m3u8"


def public_playback(stream_id: int) -> str:
    return f"/hls/{int(stream_id)}/master.m3u8"


def set_private_marker(media_dir: Path, stream_id: int, private: bool) -> None:
    """Create or remove the markers that make nginx refuse the unsigned HLS path and the
    unsigned thumbnail of a stream (the thumbnail's outlives the HLS directory)."""
    directory = hls_dir_for(media_dir, stream_id)
    directory.mkdir(parents=True, exist_ok=True)
    set_thumbnail_private_marker(media_dir, stream_id, private)
    _mark(directory / PRIVATE_MARKER, private)


def set_live_marker(media_dir: Path, stream_id: int, live: bool) -> None:
    """Whether this node's nginx serves the stream's playlists: set when its transcoder starts
    here, removed when the stream goes live on another media node (an encoder that reconnected
    elsewhere), so the edge never gets this node's stale playlists."""
    directory = hls_dir_for(media_dir, stream_id)
    if live:
        directory.mkdir(parents=True, exist_ok=True)
    elif not directory.is_dir():
        return
    _mark(directory / LIVE_MARKER, live)


def set_thumbnail_private_marker(media_dir: Path, stream_id: int, private: bool) -> None:
    directory = thumbnails_dir(media_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _mark(directory / f"{int(stream_id)}{PRIVATE_MARKER}", private)


def _mark(marker: Path, present: bool) -> None:
    if present:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def sign_thumbnail(url: str | None, stream_id: int, secret: str, ttl: int,
                   now: float | None = None) -> str | None:
    """A private stream's thumbnail URL behind a signed, expiring prefix (nginx secure_link,
    the same signature as its HLS)."""
    if not url or not url.startswith(THUMBNAILS_URL_PREFIX):
        return url
    expires = int((now or time.time()) + ttl)
    return f"{THUMBNAILS_URL_PREFIX}{expires}-{_signature(expires, stream_id, secret)}/" \
           f"{url.removeprefix(THUMBNAILS_URL_PREFIX)}"


def _signature(expires: int, stream_id: int, secret: str) -> str:
    digest = hashlib.md5(f"{expires}/{int(stream_id)} {secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")



def remove_stream_media(media_dir: Path, stream_id: int) -> None:
    """Delete a stream's HLS directory (segments are not kept after the retention period)."""
    shutil.rmtree(hls_dir_for(media_dir, stream_id), ignore_errors=True)
