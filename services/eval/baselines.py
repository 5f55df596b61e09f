"""Classical baseline at the same bytes: what a user without this codec would send.

Given a byte budget (the size of our payload for the same image), the image is
downscaled until WebP or JPEG at a fixed low quality fits the budget, then
upscaled back to the original size (bicubic) and scored like our
reconstructions. The downscale factor is found by binary search on the coded
width (aspect ratio kept); every size tried is really encoded, so the chosen
file never exceeds the budget.

When even a 1 x 1 pixel file does not fit, nothing can be sent: the result
says so (``fits=False``, ``min_bytes``) and its image is what the receiver is
left with, a flat mid-grey frame. WebP's fixed overhead alone (RIFF header 12
bytes + VP8 chunk header 8 + VP8 key-frame header 10 = 30 bytes, 46 bytes for
the smallest file Pillow writes) is larger than a typical PIC payload, and
JPEG's headers and tables (about 280 bytes) exceed most PICS payloads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from services.imaging import to_rgb

CODECS = {"webp": "WEBP", "jpeg": "JPEG"}
# "Lowest usable" quality: below these the blocks lose all colour and texture
# (WebP 0 and JPEG 1 are legal but spend the budget no better; see
# docs/evaluation.md for the trade-off measured on Kodak).
DEFAULT_QUALITY = {"webp": 10, "jpeg": 10}
WEBP_CONTAINER_BYTES = 20  # "RIFF" + size + "WEBP" + "VP8 " + chunk size
GREY = (128, 128, 128)


@dataclass(frozen=True)
class BaselineResult:
    """One classical reconstruction at (at most) a byte budget."""

    codec: str
    budget: int
    fits: bool
    data: bytes  # the coded file; empty when nothing fits
    coded_width: int  # 0 when nothing fits
    coded_height: int
    quality: int
    min_bytes: int  # smallest file this codec writes at ``quality`` (a 1 x 1 image)
    image: Image.Image  # reconstruction at the original size
    note: str = ""

    @property
    def n_bytes(self) -> int:
        return len(self.data)

    def bpp(self, width: int, height: int) -> float:
        return self.n_bytes * 8 / (width * height)


def encode_classical(image: Image.Image, codec: str, quality: int) -> bytes:
    """Encode with Pillow's WebP (method 6, the slowest, smallest) or optimised baseline JPEG."""
    if codec not in CODECS:
        raise ValueError(f"unknown classical codec {codec!r}; choose from {', '.join(CODECS)}")
    buffer = io.BytesIO()
    if codec == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=6)
    else:
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def decode_classical(data: bytes) -> Image.Image:
    return to_rgb(Image.open(io.BytesIO(data)))


def _scaled_size(width: int, height: int, coded_width: int) -> tuple[int, int]:
    return coded_width, max(1, round(height * coded_width / width))


def _try(image: Image.Image, coded_width: int, codec: str, quality: int) -> tuple[bytes, tuple[int, int]]:
    size = _scaled_size(image.width, image.height, coded_width)
    small = image if size == image.size else image.resize(size, Image.Resampling.BOX)
    return encode_classical(small, codec, quality), size


def fit_to_budget(image: Image.Image, budget: int, codec: str = "webp", quality: int | None = None) -> BaselineResult:
    """The largest downscaled ``codec`` file of ``image`` within ``budget`` bytes, upscaled back."""
    image = image.convert("RGB")
    quality = DEFAULT_QUALITY[codec] if quality is None else quality
    if budget < 0:
        raise ValueError(f"byte budget must be >= 0, got {budget}")
    smallest, _ = _try(image, 1, codec, quality)
    # A 1-pixel-wide image of a wide original can still be several pixels tall; a
    # true 1 x 1 gives the codec's floor, the figure to compare budgets against.
    min_bytes = len(encode_classical(image.resize((1, 1), Image.Resampling.BOX), codec, quality))
    if len(smallest) > budget:
        overhead = WEBP_CONTAINER_BYTES if codec == "webp" else min_bytes
        note = (
            f"{codec} at quality {quality} needs at least {len(smallest)} bytes for this image "
            f"(a 1x1 file is {min_bytes} bytes, {overhead} of them fixed overhead); "
            f"the {budget}-byte budget fits nothing, so the receiver gets a flat grey image"
        )
        grey = Image.new("RGB", image.size, GREY)
        return BaselineResult(codec, budget, False, b"", 0, 0, quality, min_bytes, grey, note)

    low, high = 1, image.width  # invariant: width ``low`` fits
    best, best_size = smallest, _scaled_size(image.width, image.height, 1)
    while low < high:
        middle = (low + high + 1) // 2
        data, size = _try(image, middle, codec, quality)
        if len(data) <= budget:
            low, best, best_size = middle, data, size
        else:
            high = middle - 1
    decoded = decode_classical(best)
    upscaled = decoded if decoded.size == image.size else decoded.resize(image.size, Image.Resampling.BICUBIC)
    note = f"{codec} q{quality} at {best_size[0]}x{best_size[1]}"
    return BaselineResult(codec, budget, True, best, best_size[0], best_size[1], quality, min_bytes, upscaled, note)


def baselines_at(image: Image.Image, budget: int, codecs=("webp", "jpeg"), quality: dict | None = None) -> dict[str, BaselineResult]:
    """Every classical codec's best fit at ``budget`` bytes."""
    quality = quality or {}
    return {codec: fit_to_budget(image, budget, codec, quality.get(codec)) for codec in codecs}
