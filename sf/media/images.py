"""Avatar images: validated, re-encoded to WebP, stripped of metadata, resized (Pillow).

Decoding is CPU and memory work: it runs on the `ImageWorker`'s own single thread, with a
bounded queue, so a burst of large uploads neither stalls the loop nor other blocking work
(bcrypt has its own threads) nor grows memory without bound.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sf.errors import RateLimited, UnsupportedMediaType, ValidationFailed

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
AVATAR_URL_PREFIX = "/media/avatars/"


def render_avatar(data: bytes, size: int, max_pixels: int) -> bytes:
    """Decode an uploaded image and return a clean square-bounded WebP of it."""
    too_large = ValidationFailed("Invalid input",
                                 fields={"avatar": [f"image is larger than {max_pixels} pixels"]})
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            width, height = probe.size
            probe.verify()
    except Image.DecompressionBombError:
        raise too_large from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UnsupportedMediaType("The upload is not a PNG, JPEG or WebP image") from None
    except Exception:  # Pillow's parsers fail in many ways on crafted files (IndexError, ...)
        raise UnsupportedMediaType("The image could not be decoded") from None
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(f"{fmt} images are not accepted: use PNG, JPEG or WebP")
    if width * height > max_pixels:
        raise too_large
    try:
        with Image.open(io.BytesIO(data)) as upload:
            # JPEG can decode straight at a fraction of its size (DCT scaling): far less memory.
            upload.draft("RGB", (size * 2, size * 2))
            upright = ImageOps.exif_transpose(upload)  # honour orientation, then drop EXIF
            mode = "RGBA" if upright.mode in ("RGBA", "LA", "P") else "RGB"
            picture = upright.convert(mode)
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            clean = Image.new(picture.mode, picture.size)
            clean.paste(picture)  # a fresh image carries no metadata of the upload
            out = io.BytesIO()
            clean.save(out, "WEBP", quality=85, method=4)
    except Image.DecompressionBombError:
        raise too_large from None
    except Exception:  # as above: a crafted file is a bad upload, never a server error
        raise UnsupportedMediaType("The image could not be decoded") from None
    return out.getvalue()


def store_avatar(media_dir: Path, user_id: int, webp: bytes) -> str:
    """Write the avatar atomically under media/avatars and return its public URL path."""
    directory = media_dir / "avatars"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{user_id}-{secrets.token_hex(8)}.webp"
    tmp = directory / f".{name}.tmp"
    tmp.write_bytes(webp)
    os.replace(tmp, directory / name)
    return AVATAR_URL_PREFIX + name


def remove_avatar(media_dir: Path, url: str | None) -> None:
    """Delete a stored avatar file that a new one replaced (external URLs are left alone)."""
    if not url or not url.startswith(AVATAR_URL_PREFIX):
        return
    name = url[len(AVATAR_URL_PREFIX):]
    if "/" in name or name.startswith("."):
        return
    try:
        (media_dir / "avatars" / name).unlink()
    except FileNotFoundError:
        pass


def remove_avatars_of(media_dir: Path, user_id: int) -> int:
    """Delete every avatar file a user ever stored (an erased account's); how many."""
    directory = media_dir / "avatars"
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.glob(f"{int(user_id)}-*.webp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class ImageWorker:
    """Runs avatar decoding on one thread of its own; refuses work past a short queue."""

    def __init__(self, media_dir: Path, size: int, max_pixels: int, queue_limit: int = 4) -> None:
        self.media_dir = media_dir
        self.size = size
        self.max_pixels = max_pixels
        self.queue_limit = queue_limit
        self.pending = 0  # touched on the loop thread only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-images")

    async def replace_avatar(self, user_id: int, data: bytes) -> str:
        """Decode, re-encode and store an upload; the new avatar's URL path.

        RateLimited (429) while `queue_limit` uploads are already waiting or being decoded.
        """
        if self.pending >= self.queue_limit:
            raise RateLimited(2, "Avatar processing is busy, retry shortly")
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            webp = await loop.run_in_executor(self._executor, render_avatar, data, self.size,
                                              self.max_pixels)
            return await loop.run_in_executor(self._executor, store_avatar, self.media_dir,
                                              user_id, webp)
        finally:
            self.pending -= 1

    async def remove(self, url: str | None) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, remove_avatar,
                                                         self.media_dir, url)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
