"""Candidate selection: which of the decoder's N renderings is closest to the input.

The published trick: render candidates 1..N (seeds derived from the payload),
score each by CLIP image-embedding cosine similarity to the input image, send
only the winner's index. The CLIP model is any transformers ``CLIPModel``
folder or hub id with its image processor beside it, or ``tiny`` (the tiny
random CLIP of ``services.tiny.encoders``, as for every model setting).
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
from PIL import Image

from services.bitstream.container import MAX_CANDIDATE
from services.devices import resolve_device
from services.errors import ModelUnavailableError
from services.serving.errors import UpstreamError
from services.tiny.encoders import resolve_model_id


@dataclass(frozen=True)
class Selection:
    """The chosen candidate index (1-based, as in the payload) and every candidate's score."""

    index: int
    scores: tuple[float, ...]


class CandidateScorer:
    """A CLIP image encoder loaded once; ``select`` picks the most similar candidate."""

    def __init__(self, model_id: str, device: str = "cpu", revision: str | None = None) -> None:
        self.model_id = model_id
        self.revision = revision  # pin a hub commit in production; ignored for local folders
        self.device = resolve_device(device)
        self._lock = threading.Lock()
        self._model = None
        self._processor = None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoImageProcessor, CLIPModel

            try:
                self._processor = AutoImageProcessor.from_pretrained(self.model_id, revision=self.revision)
                self._model = CLIPModel.from_pretrained(self.model_id, revision=self.revision).to(self.device).eval()
            except Exception as exc:  # noqa: BLE001 - any load failure (missing files, bad config, device) is one 503
                self._processor = self._model = None
                raise ModelUnavailableError(
                    f"cannot load the CLIP model {self.model_id!r} for candidate selection: {exc}. Set "
                    "TEXTSKETCH_ENCODER_SELECTION_CLIP_MODEL to a local CLIPModel folder (with its image processor)."
                ) from exc

    def embed(self, images: Sequence[Image.Image]):
        import torch

        self.load()
        with torch.no_grad():
            pixels = self._processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
            features = self._model.get_image_features(pixel_values=pixels.to(self.device))
            features = getattr(features, "pooler_output", features)
            return torch.nn.functional.normalize(features.float(), dim=-1)

    def select(self, reference: Image.Image, candidates: Sequence[Image.Image]) -> Selection:
        """Index (1-based) of the candidate with the highest cosine similarity; ties go to the lowest index."""
        if not candidates:
            raise ValueError("no candidates to select from")
        embeddings = self.embed([reference, *candidates])
        scores = (embeddings[1:] @ embeddings[0]).tolist()
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        return Selection(index=best + 1, scores=tuple(float(s) for s in scores))


@functools.lru_cache(maxsize=4)
def get_scorer(model_id: str, device: str, revision: str | None = None) -> CandidateScorer:
    return CandidateScorer(model_id, device, revision)


def load_scorer(model_id: str, device: str, revision: str | None, cache_dir: Path) -> CandidateScorer:
    """The loaded scorer for a model setting (``tiny`` resolved like every model setting) on ``device``
    (``auto``, ``cpu``, ``cuda[:N]``); ``ModelUnavailableError`` when it cannot be loaded. Blocking."""
    try:
        model_id = resolve_model_id(model_id, "clip", cache_dir)
    except Exception as exc:  # noqa: BLE001 - building the tiny CLIP failed: the scorer is unavailable
        raise ModelUnavailableError(f"cannot build the tiny CLIP model for candidate selection: {exc}") from exc
    scorer = get_scorer(model_id, resolve_device(device), revision)
    scorer.load()
    return scorer


def unpack_candidates(body: bytes, n: int) -> list[Image.Image]:
    """Images of a decoder /candidates response, checked against the count asked for."""
    try:
        # Explicit limits: a map of three short keys, at most MAX_CANDIDATE images (bins are bounded by the body).
        message = msgpack.unpackb(body, raw=False, max_map_len=3, max_array_len=MAX_CANDIDATE, max_str_len=16,
                                  max_ext_len=0)
        indices, images = message["indices"], message["images"]
        if list(indices) != list(range(1, n + 1)) or len(images) != n:
            raise ValueError(f"expected candidates 1..{n}, got {indices}")
        decoded = []
        for data in images:
            image = Image.open(io.BytesIO(data))
            image.load()
            decoded.append(image.convert("RGB"))
        return decoded
    except Exception as exc:  # noqa: BLE001 - anything malformed from the decoder is its fault, not the client's
        raise UpstreamError(f"the decoder's /candidates response is malformed: {exc}", status=502) from None
