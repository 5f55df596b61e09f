"""Sketch body version 2: the same chain walk over constriction's range coder (decoding old payloads).

Version 2 bodies (bitstream v1 payloads written before the integer coder) code
each symbol with ``constriction.stream.model.Categorical(perfect=False)``, which
receives the integer counts as float64 arrays and quantises them internally. Its
output depends on constriction's quantisation, so it is kept only to read those
payloads, with constriction pinned to the exact version that wrote them; new
bodies are version 3 (``services.sketch.chain_coder``). ``encode_bitmap_v2``
exists for comparisons and tests.
"""

from __future__ import annotations

import constriction
import numpy as np

from services.errors import BitstreamError
from services.sketch.chain_coder import decode_with, path_pixel_budget, walk
from services.sketch.contexts import AdaptiveTable

_model = constriction.stream.model  # constriction exposes its submodules as attributes only
_queue = constriction.stream.queue
_CATEGORICAL = _model.Categorical(perfect=False)


class ConstrictionCoder:
    """The version 2 entropy coder behind the shared chain walk."""

    def __init__(self, words: np.ndarray | None = None) -> None:
        self.decoding = words is not None
        self.stream = _queue.RangeDecoder(words) if self.decoding else _queue.RangeEncoder()

    def code(self, table: AdaptiveTable, alphabet: list[int], symbol: int | None) -> int:
        probabilities = np.array([[table.counts[s] for s in alphabet]], dtype=np.float64)
        if self.decoding:
            symbol = alphabet[int(self.stream.decode(_CATEGORICAL, probabilities)[0])]
        else:
            self.stream.encode(np.array([alphabet.index(symbol)], dtype=np.int32), _CATEGORICAL, probabilities)
        table.update(symbol)
        return symbol

    def code_uniform(self, value: int | None, n_bits: int) -> int:
        uniform = _model.Uniform(1 << n_bits)
        if self.decoding:
            return int(self.stream.decode(uniform))
        self.stream.encode(value, uniform)
        return value


def encode_bitmap_v2(bits: np.ndarray) -> tuple[bytes, list[list[int]]]:
    """Version 2 coding of a boolean map (big-endian 32-bit words, trailing zero bytes cut)."""
    height, width = bits.shape
    coder = ConstrictionCoder()
    paths = walk(coder, width, height, bits)
    return coder.stream.get_compressed().astype(">u4").tobytes().rstrip(b"\0"), paths


def decode_bitmap_v2(data: bytes, width: int, height: int) -> tuple[np.ndarray, list[list[int]]]:
    """Inverse of ``encode_bitmap_v2``; ``BitstreamError`` if malformed."""
    if data and data[-1] == 0:
        raise BitstreamError("corrupt sketch body: non-canonical trailing zero byte")
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    words = np.frombuffer(padded, dtype=">u4").astype(np.uint32)
    return decode_with(ConstrictionCoder(words), width, height, path_pixel_budget(len(data)))
