"""An integer range coder: symbols under integer frequency tables <-> a canonical byte string.

Every operation is integer arithmetic on Python ints (floor division, products,
shifts), so any machine and any Python produce and read the same bytes. The
scheme is the classic byte-oriented range coder with carry propagation
(Subbotin's coder with LZMA's cache/carry handling): a 32-bit ``range`` kept at or
above ``2**24`` by shifting out bytes, a ``low`` register whose carry ripples into
the bytes already pending.

A symbol is coded as ``(start, size, total)``: it owns ``[start, start + size)`` of
``[0, total)``; ``1 <= size``, ``start + size <= total <= MAX_TOTAL``.

Termination is canonical: the encoder picks, inside the final interval, the value
with the most trailing zero bytes, writes it, and strips every trailing zero byte
(the decoder reads zeros past the end). The decoder replays what it decoded
through the encoder (``check_canonical``) and refuses any other byte string, so one
symbol sequence has exactly one body.
"""

from __future__ import annotations

from services.errors import BitstreamError

TOP = 1 << 24  # range is renormalised to stay at or above this
MASK32 = (1 << 32) - 1
MAX_TOTAL = 1 << 20  # range // total >= 16: at most ~6% of one code value lost to truncation, 0.04% typical
MAX_UNIFORM_BITS = 16


class RangeEncoder:
    """Encode symbols; ``finish()`` returns the canonical body."""

    __slots__ = ("_low", "_range", "_cache", "_pending", "_out", "_first")

    def __init__(self) -> None:
        self._low = 0  # < 2**32, plus a carry bit 2**32
        self._range = MASK32
        self._cache = 0  # the byte waiting for a possible carry
        self._pending = 1  # bytes waiting: the cache byte and pending - 1 bytes of 0xFF
        self._out = bytearray()
        self._first = True  # the first byte out is always 0 (the interval starts inside [0, 2**32)): not stored

    def encode(self, start: int, size: int, total: int) -> None:
        if not (0 <= start and 0 < size and start + size <= total <= MAX_TOTAL):
            raise ValueError(f"bad symbol interval [{start}, {start + size}) of {total} (total <= {MAX_TOTAL})")
        r = self._range // total
        self._low += r * start
        self._range = r * size
        while self._range < TOP:
            self._range <<= 8
            self._shift_low()

    def encode_uniform(self, value: int, n_bits: int) -> None:
        """``n_bits`` (1..16) raw bits of ``value``, each value equally likely."""
        if not 1 <= n_bits <= MAX_UNIFORM_BITS or not 0 <= value < 1 << n_bits:
            raise ValueError(f"uniform value {value} does not fit {n_bits} bits (1..{MAX_UNIFORM_BITS})")
        self.encode(value, 1, 1 << n_bits)

    def _shift_low(self) -> None:
        low = self._low
        if low < 0xFF000000 or low > MASK32:  # the top byte is final (no carry can reach it any more)
            carry = low >> 32
            byte = self._cache
            while self._pending:
                if self._first:
                    self._first = False
                else:
                    self._out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self._pending -= 1
            self._cache = (low >> 24) & 0xFF
        self._pending += 1
        self._low = (low << 8) & MASK32

    def finish(self) -> bytes:
        """The body: the final interval's value with the most trailing zero bytes, trailing zeros removed."""
        low, high = self._low, self._low + self._range
        for k in (4, 3, 2, 1, 0):
            step = 1 << (8 * k)
            value = -(-low // step) * step
            if value < high:
                break
        self._low = value
        for _ in range(5):
            self._shift_low()
        return bytes(self._out).rstrip(b"\0")


class RangeDecoder:
    """Decode symbols from a body: ``target(total)``, find the symbol, then ``consume(start, size)``."""

    __slots__ = ("_data", "_pos", "_range", "_code", "_r", "_total", "_record")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        if self._data.endswith(b"\0"):
            raise BitstreamError("corrupt coded body: non-canonical trailing zero byte")
        self._pos = 0
        self._range = MASK32
        self._code = 0
        for _ in range(4):
            self._code = (self._code << 8) | self._next_byte()
        self._r = 0
        self._total = 0
        self._record: list[tuple[int, int, int]] = []  # (start, size, total) of every symbol, for the replay

    def _next_byte(self) -> int:
        pos = self._pos
        self._pos = pos + 1
        return self._data[pos] if pos < len(self._data) else 0

    def target(self, total: int) -> int:
        """The cumulative count in ``[0, total)`` the next symbol's interval must contain."""
        if not 0 < total <= MAX_TOTAL:
            raise ValueError(f"total must be in 1..{MAX_TOTAL}, got {total}")
        self._r = self._range // total
        self._total = total
        value = self._code // self._r
        if value >= total:
            raise BitstreamError("corrupt coded body (code value outside the interval)")
        return value

    def consume(self, start: int, size: int) -> None:
        """Take the symbol owning ``[start, start + size)`` of the last ``target`` call's total."""
        self._record.append((start, size, self._total))
        self._code -= self._r * start
        self._range = self._r * size
        while self._range < TOP:
            self._code = ((self._code << 8) | self._next_byte()) & MASK32
            self._range <<= 8

    def decode_uniform(self, n_bits: int) -> int:
        value = self.target(1 << n_bits)
        self.consume(value, 1)
        return value

    def check_canonical(self) -> None:
        """Raise ``BitstreamError`` unless the body is exactly what the encoder writes for these symbols."""
        encoder = RangeEncoder()
        for start, size, total in self._record:
            encoder.encode(start, size, total)
        if encoder.finish() != self._data:
            raise BitstreamError("corrupt coded body (not the canonical coding of its symbols: truncated, padded or altered)")
