"""Text coder: CLIP token ids <-> a short self-delimiting byte string.

Body format (``prompt`` field of the bitstream), specified in ``docs/prompt.md``:
one arithmetic code word, most significant byte first, for the sequence

    n, id_1, ..., id_n, end     (0 <= n <= MAX_PROMPT_TOKENS, 0 <= id < VOCAB_SIZE, end = 0)

where ``n`` is coded under ``LENGTH_FREQS``, ``end`` is a check symbol that
must decode as 0 (it owns the bottom 2**-END_CHECK_BITS of the final interval,
costs END_CHECK_BITS bits, and catches truncated or altered bodies that would
otherwise decode to a neighbouring id sequence), and each id under the shipped
integer prior ``services/bitstream/data/text_prior.npz`` in one of two contexts: *word
start* (first token, or the previous id ends a word) or *inside a word*.

The coder is exact rational arithmetic on Python integers: after k symbols the
interval is ``[low, low + width) / den`` with ``den`` the product of the
totals used so far. The body is the shortest byte string B (at least one byte)
whose value ``v / 256**len(B)`` falls in the final interval, taking the
smallest such ``v``. No floating point and no rounding anywhere, so any machine
and any Python decodes the same ids; bodies stay below 200 bytes, so the big
integers stay small. Because the code word is canonical (shortest, smallest),
the decoder re-encodes what it decoded and rejects any body that differs:
truncated, padded or altered bodies raise ``BitstreamError`` unless they are
themselves the canonical body of another id sequence.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import accumulate

import numpy as np

from services.bitstream.vocabulary import MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.errors import BitstreamError

PRIOR_FILE = "text_prior.npz"
WORD_START, INSIDE_WORD = 0, 1


def _length_freqs() -> tuple[int, ...]:
    """Integer prior of the token count: every count codable, 4..24 likely, 16 (PEZ default) most likely."""
    freqs = [1] * (MAX_PROMPT_TOKENS + 1)
    for n in range(4, 25):
        freqs[n] += 16
    freqs[16] += 64
    return tuple(freqs)


LENGTH_FREQS = _length_freqs()
END_CHECK_BITS = 4
END_FREQS = (1, 2**END_CHECK_BITS - 1)  # symbol 0 = a well-formed end


@dataclass(frozen=True)
class _Table:
    """Cumulative integer frequencies of one categorical: symbol s owns [cum[s], cum[s+1])."""

    cum: tuple[int, ...]  # len = alphabet + 1, cum[0] = 0

    @classmethod
    def from_freqs(cls, freqs) -> _Table:
        freqs = [int(f) for f in freqs]
        if min(freqs) < 1:
            raise ValueError("every symbol needs a frequency >= 1")
        return cls((0, *accumulate(freqs)))

    @property
    def total(self) -> int:
        return self.cum[-1]

    def find(self, target: int) -> int:
        return bisect_right(self.cum, target) - 1


@dataclass(frozen=True)
class TextPrior:
    """The static prior: a length table, two id tables, and which ids end a word."""

    length: _Table
    end: _Table
    ids: tuple[_Table, _Table]
    word_end: tuple[bool, ...]

    def id_table(self, previous: int | None) -> _Table:
        return self.ids[WORD_START if previous is None or self.word_end[previous] else INSIDE_WORD]


@functools.lru_cache(maxsize=1)
def load_prior() -> TextPrior:
    """Load the shipped integer prior (once per process)."""
    with (
        resources.files("services.bitstream").joinpath("data", PRIOR_FILE).open("rb") as f,
        np.load(f, allow_pickle=False) as npz,
    ):
        freqs = npz["freqs"]
        word_end = npz["word_end"]
    if freqs.shape != (2, VOCAB_SIZE) or word_end.shape != (VOCAB_SIZE,):
        raise RuntimeError(f"{PRIOR_FILE} has the wrong shape; regenerate it with scripts/build_text_prior.py")
    return TextPrior(
        length=_Table.from_freqs(LENGTH_FREQS),
        end=_Table.from_freqs(END_FREQS),
        ids=(_Table.from_freqs(freqs[0].tolist()), _Table.from_freqs(freqs[1].tolist())),
        word_end=tuple(bool(x) for x in word_end.tolist()),
    )


def _symbols(ids: Sequence[int], prior: TextPrior):
    """(table, symbol) pairs in coding order."""
    yield prior.length, len(ids)
    previous = None
    for token in ids:
        yield prior.id_table(previous), token
        previous = token
    yield prior.end, 0


def _check_ids(ids: Sequence[int]) -> list[int]:
    ids = list(ids)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise ValueError(f"a prompt holds at most {MAX_PROMPT_TOKENS} tokens, got {len(ids)}; truncate it first")
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < VOCAB_SIZE:
            raise ValueError(f"token ids must be integers in 0..{VOCAB_SIZE - 1}, got {token!r}")
    return [int(t) for t in ids]


def encode_token_ids(ids: Sequence[int]) -> bytes:
    """Code 0..MAX_PROMPT_TOKENS CLIP token ids into a body of at least one byte."""
    ids = _check_ids(ids)
    low, width, den = 0, 1, 1
    for table, symbol in _symbols(ids, load_prior()):
        low = low * table.total + width * table.cum[symbol]
        width *= table.cum[symbol + 1] - table.cum[symbol]
        den *= table.total
    # Shortest byte string, then smallest value, inside [low, low + width) / den.
    n_bytes = 1
    while True:
        scale = 256**n_bytes
        value = -((-low * scale) // den)  # ceil(low * scale / den)
        if value * den < (low + width) * scale:
            return value.to_bytes(n_bytes, "big")
        n_bytes += 1


def decode_token_ids(body: bytes) -> list[int]:
    """Decode a body from ``encode_token_ids``; raise ``BitstreamError`` if it is not one."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"prompt body must be bytes, got {type(body).__name__}")
    body = bytes(body)
    if not body:
        raise BitstreamError("empty prompt body; a coded prompt has at least one byte")
    prior = load_prior()
    value, scale = int.from_bytes(body, "big"), 256 ** len(body)
    low, width, den = 0, 1, 1

    def next_symbol(table: _Table) -> int:
        nonlocal low, width, den
        # Position of value/scale inside the current interval, in units of 1/table.total.
        target = ((value * den - low * scale) * table.total) // (width * scale)
        if not 0 <= target < table.total:
            raise BitstreamError("corrupt prompt body (code value outside the interval)")
        symbol = table.find(target)
        low = low * table.total + width * table.cum[symbol]
        width *= table.cum[symbol + 1] - table.cum[symbol]
        den *= table.total
        return symbol

    count = next_symbol(prior.length)
    ids: list[int] = []
    previous = None
    for _ in range(count):
        previous = next_symbol(prior.id_table(previous))
        ids.append(previous)
    if next_symbol(prior.end) != 0:
        raise BitstreamError("corrupt prompt body (end check failed: truncated or altered)")
    if encode_token_ids(ids) != body:
        raise BitstreamError(
            "corrupt prompt body (not the canonical coding of its tokens: truncated, padded or altered)"
        )
    return ids


def cost_bits(ids: Sequence[int]) -> float:
    """Ideal information content of ``ids`` under the prior, in bits (the body is this, rounded up to bytes)."""
    return sum(
        math.log2(table.total / (table.cum[s + 1] - table.cum[s]))
        for table, s in _symbols(_check_ids(ids), load_prior())
    )


def rate_capped_vocabulary(max_bits: float) -> tuple[int, ...]:
    """Whole-word ids (ending in ``</w>``, no BOS/EOS) that cost at most ``max_bits`` each.

    Every id of this set ends a word, so each is coded in the word-start context;
    a PEZ search restricted to it (``settings.pez_vocab``) yields prompts of at
    most ``max_body_bytes(n_tokens, max_bits)`` bytes, whatever it finds.
    """
    prior = load_prior()
    table = prior.ids[WORD_START]
    limit = table.total / 2**max_bits  # cost <= max_bits  <=>  freq >= total / 2**max_bits
    return tuple(i for i in range(VOCAB_SIZE - 2) if prior.word_end[i] and table.cum[i + 1] - table.cum[i] >= limit)


def max_body_bytes(n_tokens: int, max_bits_per_token: float) -> int:
    """Upper bound on the body size of ``n_tokens`` ids that each cost at most ``max_bits_per_token`` bits."""
    length_bits = math.log2(load_prior().length.total / LENGTH_FREQS[n_tokens])
    # An interval of width w holds a multiple of 256**-n once 256**-n <= w; the + 1 bit covers float rounding.
    return math.ceil((length_bits + n_tokens * max_bits_per_token + END_CHECK_BITS + 1) / 8)
