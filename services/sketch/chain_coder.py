"""Lossless coding of a bilevel sketch as chains of 8-connected moves, integers only.

A bitmap is walked in raster order. The first unvisited 1-pixel starts a path;
the path is followed forward, then backward from its start, one 8-neighbour at
a time, and every pixel it passes is marked visited. Coded symbols:

* the kind of the next path start: END (no more paths), NEW (a pixel that
  touches no visited pixel: usually a new 8-connected piece) or BRANCH (a pixel
  next to a visited one: a branch off a path already coded);
* ``skip``, as ``v = skip + 1``: for NEW, how many unvisited pixels that touch
  no visited pixel lie between the previous start and this one; for BRANCH, how
  many unvisited pixels that touch a visited one do. The bit length of ``v``
  has an adaptive model per kind; its lower bits are uniform;
* the first move of each direction (an absolute direction, or STOP);
* every further move as a turn relative to the last direction (0, +-45, +-90,
  +-135 degrees) or STOP, in a context of the last turn and whether the last move
  was diagonal.

Moves the decoder already knows are impossible (off the map, into a visited
pixel, or into a pixel before the path's start in raster order, which must be 0)
are removed from the alphabet; when no move is possible STOP is implied and not
coded. Encoder and decoder run the same ``walk``, so they cannot drift apart.

Each symbol is coded under the integer counts of its context
(``services.sketch.contexts``) restricted to the symbols still possible, by the
integer range coder ``services.bitstream.range_coder``: every coded bit is
computed from integers only. ``walk`` takes any *coder* with ``code(table,
alphabet, symbol)`` and ``code_uniform(value, n_bits)`` (at most 16 bits); the legacy body version 2
(``services.sketch.legacy``) runs the same walk over another entropy coder.
"""

from __future__ import annotations

import numpy as np

from services.bitstream.range_coder import RangeDecoder, RangeEncoder
from services.errors import BitstreamError
from services.sketch.contexts import MAX_LENGTH_BITS, AdaptiveTable, Tables

# Direction d -> (dx, dy): E, NE, N, NW, W, SW, S, SE (counter-clockwise, y down).
DIRECTIONS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
TURNS = (0, 1, 7, 2, 6, 3, 5)  # turn index -> (new - previous) mod 8; 4 (reverse) never happens
STOP_TURN = len(TURNS)  # symbol index of STOP in the turn alphabet
STOP_DIR = 8  # symbol index of STOP in the first-move alphabet

END, NEW, BRANCH = 0, 1, 2  # kinds of the next path start


class IntegerCoder:
    """One side of the integer range coder: ``code`` encodes ``symbol`` or, when decoding, returns one."""

    __slots__ = ("record", "decoding", "stream")

    def __init__(self, data: bytes | None = None, record: list | None = None) -> None:
        self.record = record  # encoder only: (table name, symbol) of every modelled symbol
        self.decoding = data is not None
        self.stream = RangeDecoder(data) if self.decoding else RangeEncoder()

    def code(self, table: AdaptiveTable, alphabet: list[int], symbol: int | None) -> int:
        """Code ``symbol`` (one of ``alphabet``) under ``table``'s counts of ``alphabet``; return the symbol."""
        counts = table.counts
        total = 0
        for s in alphabet:
            total += counts[s]
        start = 0
        if self.decoding:
            target = self.stream.target(total)
            for symbol in alphabet:
                size = counts[symbol]
                if target < start + size:
                    break
                start += size
            self.stream.consume(start, size)
        else:
            for s in alphabet:
                if s == symbol:
                    break
                start += counts[s]
            else:
                raise ValueError(f"symbol {symbol} is not in the alphabet {alphabet}")
            self.stream.encode(start, counts[symbol], total)
            if self.record is not None:
                self.record.append((table.name, symbol))
        table.update(symbol)
        return symbol

    def code_uniform(self, value: int | None, n_bits: int) -> int:
        """Code ``n_bits`` (1..16) equally likely bits of ``value`` or, when decoding, return them."""
        if self.decoding:
            return self.stream.decode_uniform(n_bits)
        self.stream.encode_uniform(value, n_bits)
        return value


def code_bits(coder, value: int | None, n_bits: int) -> int:
    """Code ``n_bits`` raw bits of ``value`` (uniform), 16 at a time, with any coder."""
    result = 0
    for shift in range(0, n_bits, 16):
        width = min(16, n_bits - shift)
        chunk = None if value is None else (value >> shift) & ((1 << width) - 1)
        result |= coder.code_uniform(chunk, width) << shift
    return result


# Decoding cost bound: a body may decode to at most this many path pixels. The walk never visits a
# cell twice, so the low-resolution grid bounds the work too, but adaptive tables make long runs
# almost free: a crafted 115-byte body filled a 1024x256 grid (1.3 s of Python). Real sketches stay
# far below: at most 7.2 path pixels per byte over 24 Kodak HED maps at every quality level, 33 for
# synthetic line art (40 full-length lines at 2048x1024).
PATH_PIXELS_FLOOR = 65536
PATH_PIXELS_PER_BYTE = 256


def path_pixel_budget(n_bytes: int) -> int:
    """How many path pixels a coded bitmap of ``n_bytes`` may decode to."""
    return PATH_PIXELS_FLOOR + PATH_PIXELS_PER_BYTE * n_bytes


def walk(coder, width: int, height: int, bits: np.ndarray | None,
         max_path_pixels: int | None = None) -> list[list[int]]:
    """Code (or decode) a bitmap; return its paths as lists of flat pixel indices.

    The walk runs on a grid padded by one pixel on each side whose border is
    marked visited, so neighbour moves need no bounds checks; padded raster
    order is the same as the map's raster order. ``near`` marks cells that are
    visited or touch a visited pixel (NEW starts are counted among the others);
    ``touching`` marks unvisited cells that touch a visited pixel (BRANCH starts).
    """
    stride = width + 2
    visited = bytearray([1]) * (stride * (height + 2))
    for y in range(height):
        visited[(y + 1) * stride + 1 : (y + 1) * stride + 1 + width] = bytes(width)
    near = bytearray(visited)
    touching = bytearray(len(visited))
    flat = None
    ones: list[int] = []
    if bits is not None:
        padded = np.zeros((height + 2, stride), dtype=np.uint8)
        padded[1:-1, 1:-1] = bits
        flat = padded.reshape(-1).tobytes()
        ones = np.flatnonzero(padded.reshape(-1)).tolist()
    offsets = tuple(dy * stride + dx for dx, dy in DIRECTIONS)
    next_one = 0
    tables = Tables()
    kinds = [END, NEW, BRANCH]
    lengths = list(range(1, MAX_LENGTH_BITS + 1))
    paths: list[list[int]] = []
    pos = 0
    budget = max_path_pixels
    while True:
        kind = value = None  # value = skip + 1
        if flat is not None:
            while next_one < len(ones) and visited[ones[next_one]]:
                next_one += 1
            if next_one == len(ones):
                kind = END
            else:
                start = ones[next_one]
                if near[start]:
                    kind, value = BRANCH, touching.count(1, pos, start) + 1
                else:
                    kind, value = NEW, start - pos - near.count(1, pos, start) + 1
        kind = coder.code(tables.kind, kinds, kind)
        if kind == END:
            return [[(q // stride - 1) * width + q % stride - 1 for q in path] for path in paths]
        n_bits = coder.code(tables.length[kind], lengths, None if value is None else value.bit_length())
        skip = ((1 << (n_bits - 1)) | code_bits(coder, value, n_bits - 1)) - 1
        if flat is None:
            start = _nth_unvisited(near, pos, skip) if kind == NEW else _nth_set(touching, pos, skip)
        visited[start] = 1
        pos = start + 1
        forward = _chain(coder, tables, 0, start, offsets, visited, flat, budget)
        backward = _chain(coder, tables, 1, start, offsets, visited, flat,
                          None if budget is None else budget - len(forward))
        path = backward[::-1] + [start] + forward
        if budget is not None:
            budget -= len(path)
            if budget < 0:
                raise BitstreamError(
                    f"corrupt sketch body: it decodes to more than the {max_path_pixels} path pixels a body "
                    "of its size may hold")
        paths.append(path)
        for p in path:
            touching[p] = 0
            near[p] = 1
            for o in offsets:
                if not visited[p + o]:
                    touching[p + o] = 1
                    near[p + o] = 1


def _nth_set(cells: bytearray, pos: int, skip: int) -> int:
    """Index of the ``skip``-th (0-based) set cell at or after ``pos``: galloping, then bisection
    on C-speed counts (a corrupt ``skip`` costs at most a few passes over the map)."""
    if cells.count(1, pos) <= skip:
        raise BitstreamError("corrupt sketch body: a path starts beyond the end of the map")
    width = skip + 1
    while cells.count(1, pos, pos + width) <= skip:
        width *= 2
    low, high = pos + skip, pos + width  # the answer is in [low, high)
    while low < high:
        mid = (low + high) // 2
        if cells.count(1, pos, mid + 1) > skip:
            high = mid
        else:
            low = mid + 1
    return low


def _nth_unvisited(visited: bytearray, pos: int, skip: int) -> int:
    """Index of the ``skip``-th (0-based) unvisited cell at or after ``pos``; linear in the span, in C."""
    low, remaining = pos, skip
    while True:
        end = low + remaining
        if end >= len(visited):
            raise BitstreamError("corrupt sketch body: a path starts beyond the end of the map")
        taken = visited.count(1, low, end + 1)
        if not taken:
            return end
        low, remaining = end + 1, taken - 1


# For each last direction: (turn index, new direction) pairs in turn order.
_TURN_MOVES = tuple(tuple((t, (last + r) % 8) for t, r in enumerate(TURNS)) for last in range(8))
_FIRST_CHOICE = (6, 0, 7, 5)  # encoder's first move preference: S, E, SE, SW


def _chain(coder, tables, side, start, offsets, visited, flat, budget: int | None = None) -> list[int]:
    """Follow one direction from ``start`` (padded index); return the pixels visited after it.

    Stops (returning what it has) once it holds more than ``budget`` pixels; the caller raises."""
    pixels: list[int] = []
    if budget is None:
        budget = len(visited)
    current = start
    last_dir = last_turn = -1
    while True:
        moves = {}
        for d in range(8):
            q = current + offsets[d]
            if q > start and not visited[q]:
                moves[d] = q
        if not moves:
            return pixels
        if last_dir < 0:
            wanted = None
            if flat is not None:
                wanted = next((d for d in _FIRST_CHOICE if d in moves and flat[moves[d]]), STOP_DIR)
            d = coder.code(tables.first[side], sorted(moves) + [STOP_DIR], wanted)
            if d == STOP_DIR:
                return pixels
            last_turn = STOP_TURN  # "no turn yet" context
        else:
            candidates = [(t, d) for t, d in _TURN_MOVES[last_dir] if d in moves]
            wanted = None
            if flat is not None:
                wanted = next((t for t, d in candidates if flat[moves[d]]), STOP_TURN)
            table = tables.turn_table(last_turn, last_dir)
            t = coder.code(table, [t for t, _ in candidates] + [STOP_TURN], wanted)
            if t == STOP_TURN:
                return pixels
            d = (last_dir + TURNS[t]) % 8
            last_turn = t
        last_dir = d
        current = moves[d]
        visited[current] = 1
        pixels.append(current)
        if len(pixels) > budget:
            return pixels


def encode_bitmap(bits: np.ndarray, record: list | None = None) -> tuple[bytes, list[list[int]]]:
    """Code a boolean H x W map; return the canonical coded bytes and its paths.

    ``record``, if given, receives ``(table name, symbol)`` for every modelled symbol (prior fitting)."""
    height, width = bits.shape
    coder = IntegerCoder(record=record)
    paths = walk(coder, width, height, bits)
    return coder.stream.finish(), paths


def decode_bitmap(data: bytes, width: int, height: int) -> tuple[np.ndarray, list[list[int]]]:
    """Inverse of ``encode_bitmap``: the boolean H x W map and its paths; ``BitstreamError`` if malformed
    or if it decodes to more than ``path_pixel_budget(len(data))`` path pixels."""
    coder = IntegerCoder(bytes(data))
    bits, paths = decode_with(coder, width, height, path_pixel_budget(len(data)))
    coder.stream.check_canonical()
    return bits, paths


def decode_with(coder, width: int, height: int,
                max_path_pixels: int | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """Run the walk as a decoder with ``coder``: the map and its paths; any coder failure is a ``BitstreamError``."""
    try:
        paths = walk(coder, width, height, None, max_path_pixels)
    except BitstreamError:
        raise
    except (AssertionError, ValueError, IndexError, OverflowError) as exc:  # constriction raises AssertionError
        raise BitstreamError(f"corrupt sketch body ({type(exc).__name__})") from None
    bits = np.zeros(width * height, dtype=bool)
    for path in paths:
        bits[path] = True
    return bits.reshape(height, width), paths
