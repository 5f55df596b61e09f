"""Image I/O for the codec: safe decoding of untrusted files and resizing.

Every input goes through ``load_image`` (or ``load_image_for_coding``): size
limits are checked on the file, on the declared pixel count and, when the caller
passes ``working_size``, on the working size the codec will need, all *before*
pixels are decoded (decompression bombs, extreme aspect ratios), and whatever the
file holds (palette, CMYK, 16-bit, alpha, animation) comes out as one 8-bit RGB
frame with EXIF orientation applied. ``load_image_for_coding`` also decodes a
JPEG at the smallest DCT scale (1/1, 1/2, 1/4 or 1/8) that still covers the
working size, so a 6000x6000 JPEG coded at 512x512 costs 1/64 of its full size.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import CodecError, ImageInputError, ImageTooLargeError, UnsupportedMediaError

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


# ``working_size(width, height)`` for the size a file declares (as the file stores it, before EXIF
# orientation): the codec's working size for it, or an exception (e.g. ImageTooLargeError) to refuse it.
# The working size of a transposed image is the transpose, so the check does not depend on orientation.
WorkingSize = Callable[[int, int], tuple[int, int]]

_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class LoadedImage:
    """An image file decoded for coding: its pixels and the original's size (EXIF orientation applied).

    ``image`` is smaller than ``size`` when a JPEG was decoded at a reduced DCT scale; it is never
    smaller than the working size it was decoded for.
    """

    image: Image.Image
    size: tuple[int, int]


def load_image(data: bytes, *, max_bytes: int, max_pixels: int, working_size: WorkingSize | None = None) -> Image.Image:
    """Decode an untrusted image file into an 8-bit RGB image at its full size, within limits.

    ``working_size``, when given, checks the declared size before any pixel is decoded.
    """
    return _load(data, max_bytes, max_pixels, working_size, reduce=False).image


def load_image_for_coding(data: bytes, *, max_bytes: int, max_pixels: int, working_size: WorkingSize) -> LoadedImage:
    """Like ``load_image``, for an image about to be resized to its working size: a JPEG is decoded at
    the smallest DCT scale that still covers that size (never below it); ``size`` is the original's."""
    return _load(data, max_bytes, max_pixels, working_size, reduce=True)


def _load(data: bytes, max_bytes: int, max_pixels: int, working_size: WorkingSize | None,
          reduce: bool) -> LoadedImage:
    if not data:
        raise ImageInputError("empty image body; send the image file's bytes")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaError(
                    f"unsupported image format {image.format}; send PNG, JPEG, WebP, BMP, TIFF, GIF or PPM"
                )
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image declares {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            target = working_size(width, height) if working_size is not None else None
            image.seek(0)  # first frame of animations
            transposed = False
            if reduce and target is not None and image.format == "JPEG":
                # The draft size is in the file's own orientation (like width, height and target); EXIF
                # orientation is applied after decoding. A JPEG's EXIF is in its header: no pixels decoded.
                transposed = image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS
                image.draft("RGB", target)
            image.load()
    except CodecError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaError("the body is not an image file this service can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageInputError(f"image file is truncated or corrupt: {exc}") from None
    rgb = to_rgb(image)
    if image.size == (width, height):  # full size: the RGB frame (orientation applied) has the original's size
        return LoadedImage(rgb, rgb.size)
    return LoadedImage(rgb, (height, width) if transposed else (width, height))


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
