"""Image I/O for the codec: safe decoding of untrusted files and resizing.

Every input goes through ``load_image``: size limits are checked on the file
and on the declared pixel count *before* pixels are decoded (decompression
bombs), and whatever the file holds (palette, CMYK, 16-bit, alpha, animation)
comes out as one 8-bit RGB frame with EXIF orientation applied.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import ImageInputError, ImageTooLargeError, UnsupportedMediaError

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM"})
ACCEPTED_CONTENT_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/gif",
        "image/x-portable-pixmap",
        "image/x-portable-anymap",
        "application/octet-stream",
    }
)
OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}


def load_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an untrusted image file into an 8-bit RGB image, within limits."""
    if not data:
        raise ImageInputError("empty image body; send the image file's bytes")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaError(
                    f"unsupported image format {image.format}; send PNG, JPEG, WebP, BMP, TIFF, GIF or PPM"
                )
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image declares {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            image.seek(0)  # first frame of animations
            image.load()
    except (ImageInputError, ImageTooLargeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaError("the body is not an image file this service can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageInputError(f"image file is truncated or corrupt: {exc}") from None
    return to_rgb(image)


def load_image_file(path: str | Path, *, max_bytes: int, max_pixels: int) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"no such image file: {path}")
    return load_image(path.read_bytes(), max_bytes=max_bytes, max_pixels=max_pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """One 8-bit RGB frame: orientation applied, 16-bit scaled, alpha over white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize with a filter suited to the direction (area-averaging down, bicubic up)."""
    if image.size == (width, height):
        return image
    shrinking = width * height < image.width * image.height
    return image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)


def save_image(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """The bytes of ``image`` saved as a PNG, WebP or JPEG file (``quality`` for WebP and JPEG)."""
    pil_format = OUTPUT_FORMATS.get(fmt.lower())
    if pil_format is None:
        raise ValueError(f"unsupported output format {fmt!r}; use png, webp or jpeg")
    buffer = io.BytesIO()
    options = {"quality": quality} if pil_format in ("WEBP", "JPEG") else {"compress_level": 6}
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()
