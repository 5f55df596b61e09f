"""The chain coder's context model: adaptive integer symbol counts, one table per context.

Every table starts from fixed integer counts (``PRIORS``, fitted once on the symbols
coded for the 24 Kodak HED maps at levels 0-3 by ``bench/sketch_priors.py``), is
incremented by ``INCREMENT`` for each symbol coded with it, and halved (rounding
up) when a count passes ``LIMIT``. Counts are integers only; the entropy coder
takes the counts of the symbols still possible as its frequency table. The
tables are part of the wire format: changing them needs a new body version.
"""

from __future__ import annotations

INCREMENT = 16
LIMIT = 1 << 13
MAX_LENGTH_BITS = 40  # bit length of ``skip + 1``; plenty for any permitted sketch
N_TURN_CONTEXTS = 16  # (last turn 0..6 or "first move" 7) x (last move diagonal or not)

# Initial integer counts per table (part of the wire format: changing them needs a new body
# version). Fitted by bench/sketch_priors.py on the symbols coded for the 24 Kodak HED maps at
# levels 0-3: frequencies scaled to about 64 observations (x INCREMENT), at least 1; turn tables
# smoothed towards all turns pooled. Index = symbol: kind END/NEW/BRANCH; length tables by bit
# length 0..40 (0 unused); first moves E, NE, N, NW, W, SW, S, SE, STOP; turns in TURNS order + STOP;
# turn tables by context last_turn * 2 + last_move_diagonal (last_turn 7 = "first move").
_ONES = (1,) * 28
PRIORS: dict[str, tuple[int, ...]] = {
    "kind": (16, 323, 684),
    "length_new": (1, 14, 62, 82, 93, 135, 166, 161, 137, 95, 52, 25, 3) + _ONES,
    "length_branch": (1, 5, 87, 118, 182, 248, 232, 128, 20, 2, 1, 1, 1) + _ONES,
    "first0": (321, 1, 1, 1, 1, 120, 304, 179, 102),
    "first1": (7, 1, 1, 1, 1, 168, 1, 5, 845),
    "turn0": (763, 100, 95, 1, 1, 1, 1, 64),
    "turn1": (362, 277, 243, 56, 35, 1, 2, 49),
    "turn2": (579, 127, 246, 1, 1, 1, 8, 62),
    "turn3": (262, 307, 329, 24, 39, 1, 1, 64),
    "turn4": (591, 285, 79, 1, 2, 1, 1, 66),
    "turn5": (261, 430, 216, 38, 16, 1, 1, 64),
    "turn6": (572, 167, 102, 5, 4, 1, 1, 173),
    "turn7": (265, 153, 338, 68, 58, 2, 1, 140),
    "turn8": (524, 200, 183, 4, 3, 1, 1, 108),
    "turn9": (241, 278, 148, 128, 93, 1, 1, 136),
    "turn10": (456, 143, 249, 11, 9, 1, 1, 155),
    "turn11": (398, 124, 217, 31, 7, 1, 1, 244),
    "turn12": (425, 319, 116, 10, 8, 1, 1, 145),
    "turn13": (397, 214, 69, 24, 3, 1, 1, 317),
    "turn14": (670, 79, 143, 3, 5, 1, 1, 124),
    "turn15": (254, 281, 230, 46, 31, 1, 1, 182),
}



class AdaptiveTable:
    """Integer symbol counts for one context."""

    __slots__ = ("counts", "name")

    def __init__(self, name: str) -> None:
        self.counts = list(PRIORS[name])
        self.name = name

    def update(self, symbol: int) -> None:
        counts = self.counts
        counts[symbol] += INCREMENT
        if counts[symbol] > LIMIT:
            self.counts = [(c + 1) >> 1 for c in counts]


class Tables:
    """Every context's table, freshly initialised for one bitmap."""

    def __init__(self) -> None:
        self.kind = AdaptiveTable("kind")
        self.length = {1: AdaptiveTable("length_new"), 2: AdaptiveTable("length_branch")}  # by kind NEW, BRANCH
        self.first = [AdaptiveTable("first0"), AdaptiveTable("first1")]  # forward, backward
        # Context of a turn: the last turn (or "first move") and whether the last move was diagonal.
        self.turn = [AdaptiveTable(f"turn{i}") for i in range(N_TURN_CONTEXTS)]

    def turn_table(self, last_turn: int, last_dir: int) -> AdaptiveTable:
        return self.turn[last_turn * 2 + (last_dir & 1)]
