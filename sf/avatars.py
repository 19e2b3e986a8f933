"""Avatar images: validated, re-encoded to WebP, stripped of metadata, resized (Pillow).

Decoding runs in an executor: it is CPU work and must not stall the loop.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sf.errors import UnsupportedMediaType, ValidationFailed

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
AVATAR_URL_PREFIX = "/media/avatars/"


def render_avatar(data: bytes, size: int, max_pixels: int) -> bytes:
    """Decode an uploaded image and return a clean square-bounded WebP of it."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            width, height = probe.size
            probe.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UnsupportedMediaType("The upload is not a PNG, JPEG or WebP image") from None
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(f"{fmt} images are not accepted: use PNG, JPEG or WebP")
    if width * height > max_pixels:
        raise ValidationFailed("Invalid input",
                               fields={"avatar": [f"image is larger than {max_pixels} pixels"]})
    try:
        with Image.open(io.BytesIO(data)) as upload:
            upright = ImageOps.exif_transpose(upload)  # honour orientation, then drop EXIF
            mode = "RGBA" if upright.mode in ("RGBA", "LA", "P") else "RGB"
            picture = upright.convert(mode)
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            clean = Image.new(picture.mode, picture.size)
            clean.paste(picture)  # a fresh image carries no metadata of the upload
            out = io.BytesIO()
            clean.save(out, "WEBP", quality=85, method=4)
    except (OSError, ValueError, Image.DecompressionBombError):
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
