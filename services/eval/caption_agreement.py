"""Does a faster caption runtime send the same caption? Two captioners compared token by token.

Both captioners caption the same images with the same token cap; their captions (token ids in
the caption model's vocabulary, special tokens dropped) are compared by token edit distance
(Levenshtein over ids: insertions, deletions and substitutions each count one). The int8 /
int8-bf16 runtimes of ``services.prompt.caption`` round differently from fp32, so greedy
decoding can take another token where two candidates are nearly tied, and every later token
can then differ too. ``tests/test_caption_runtime.py`` holds the bound on the repository's
images with the tiny BLIP; the full-size figures come from ``bench/caption_bench.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image

from services.prompt.caption import Captioner


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences."""
    previous = list(range(len(b) + 1))
    for i, token_a in enumerate(a, 1):
        current = [i]
        for j, token_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token_a != token_b)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class CaptionPair:
    """One image's captions: the reference's and the fast runtime's token ids."""

    reference: tuple[int, ...]
    fast: tuple[int, ...]

    @property
    def edit_distance(self) -> int:
        return token_edit_distance(self.reference, self.fast)

    @property
    def common_prefix(self) -> int:
        """Tokens the two captions share before the first difference (greedy decoding continues from a flipped
        token, so one flip usually changes the rest of the caption)."""
        return next((i for i, (a, b) in enumerate(zip(self.reference, self.fast)) if a != b),
                    min(len(self.reference), len(self.fast)))


@dataclass(frozen=True)
class CaptionAgreement:
    pairs: tuple[CaptionPair, ...]

    @property
    def identical(self) -> int:
        return sum(pair.edit_distance == 0 for pair in self.pairs)

    @property
    def identical_share(self) -> float:
        return self.identical / len(self.pairs)

    @property
    def mean_edit_distance(self) -> float:
        return statistics.fmean(pair.edit_distance for pair in self.pairs)

    @property
    def max_edit_distance(self) -> int:
        return max(pair.edit_distance for pair in self.pairs)

    @property
    def mean_common_prefix(self) -> float:
        return statistics.fmean(pair.common_prefix for pair in self.pairs)

    @property
    def distinct_reference_captions(self) -> int:
        """How many different captions the reference gave (a random-weight model may give one for every image,
        which makes the agreement one comparison repeated)."""
        return len({pair.reference for pair in self.pairs})

    def summary(self) -> str:
        return (f"{self.identical}/{len(self.pairs)} identical, token edit distance mean "
                f"{self.mean_edit_distance:.2f} max {self.max_edit_distance}, first difference after "
                f"{self.mean_common_prefix:.1f} tokens on average ({self.distinct_reference_captions} distinct "
                "reference captions)")


def caption_agreement(reference: Captioner, fast: Captioner, images: Iterable[Image.Image],
                      max_new_tokens: int) -> CaptionAgreement:
    """Caption every image with both captioners and pair the token ids (at least one image)."""
    pairs = tuple(CaptionPair(tuple(reference.caption_ids(image, max_new_tokens)),
                              tuple(fast.caption_ids(image, max_new_tokens))) for image in images)
    if not pairs:
        raise ValueError("caption_agreement needs at least one image")
    return CaptionAgreement(pairs)
