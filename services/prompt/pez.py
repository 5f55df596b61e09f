"""PEZ hard-prompt inversion: find CLIP tokens whose text feature matches an image.

The published recipe (Wen et al., "Hard Prompts Made Easy"): keep ``n_tokens``
continuous token embeddings; at every step project them onto their nearest
vocabulary embeddings (cosine), compute the loss on the *projected* prompt and
apply its gradient to the continuous embeddings (straight-through), AdamW with
lr 0.1 and weight decay 0.1; keep the projected prompt with the best cosine to
the image feature. Unlike the published encoder this one is seeded, so the same
image, model and settings give the same token ids.

The CLIP model is any ``transformers.CLIPModel`` checkpoint (hub id or local
folder, ``settings.clip_model``) with its image processor saved beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from services.bitstream.vocabulary import BOS_ID, EOS_ID, VOCAB_SIZE
from services.errors import EncodeCancelledError, ModelUnavailableError
from services.settings import CodecSettings

log = logging.getLogger("textsketch.pez")


@dataclass(frozen=True)
class PezConfig:
    """The PEZ knobs (defaults are the published ones, see ``CodecSettings``)."""

    steps: int = 3000
    n_tokens: int = 16
    lr: float = 0.1
    weight_decay: float = 0.1
    seed: int = 0
    vocab: tuple[int, ...] | None = None  # allowed ids; None = every id but BOS/EOS
    timeout_s: float | None = None  # time budget: then stop and keep the best prompt so far

    @classmethod
    def from_settings(cls, settings: CodecSettings) -> PezConfig:
        return cls(
            steps=settings.pez_steps,
            n_tokens=settings.pez_tokens,
            lr=settings.pez_lr,
            weight_decay=settings.pez_weight_decay,
            seed=settings.pez_seed,
            vocab=read_vocab_file(settings.pez_vocab) if settings.pez_vocab else None,
            timeout_s=settings.pez_timeout_s,
        )


@dataclass(frozen=True)
class PezResult:
    ids: tuple[int, ...]
    cosine: float  # cosine of the kept prompt's text feature to the image feature
    step: int  # the step at which it was found
    steps_run: int = 0  # optimisation steps done (fewer than asked when the time budget ran out)


def read_vocab_file(path: Path) -> tuple[int, ...]:
    """Allowed token ids, one integer per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelUnavailableError(f"cannot read the PEZ vocabulary file {path}: {exc}") from exc
    ids = sorted({int(line.split("#")[0]) for line in lines if line.split("#")[0].strip()})
    bad = [i for i in ids if not 0 <= i < VOCAB_SIZE or i in (BOS_ID, EOS_ID)]
    if bad or not ids:
        raise ValueError(f"{path}: PEZ vocabulary ids must be in 0..{VOCAB_SIZE - 3} (no BOS/EOS); bad: {bad[:5]}")
    return tuple(ids)


class PezInverter:
    """A CLIP model loaded once; ``invert`` runs PEZ on one image."""

    def __init__(self, model_id: str, device: torch.device, revision: str | None = None):
        from transformers import AutoImageProcessor, CLIPModel

        try:
            self.processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
            self.model = CLIPModel.from_pretrained(model_id, revision=revision).to(device).eval()
        except OSError as exc:
            raise ModelUnavailableError(
                f"cannot load the CLIP model {model_id!r} for PEZ: {exc}. Set TEXTSKETCH_CLIP_MODEL to a local "
                "folder holding a transformers CLIPModel and its image processor, or allow hub access."
            ) from exc
        if self.model.config.text_config.vocab_size != VOCAB_SIZE:
            raise ModelUnavailableError(f"{model_id!r} does not use the {VOCAB_SIZE}-token CLIP vocabulary")
        self.model.requires_grad_(False)
        self.device = device
        self.token_embedding = self.model.text_model.embeddings.token_embedding.weight  # (V, D)

    @torch.no_grad()
    def image_features(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"].to(self.device)
        features = self.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def text_features(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised text features of BOS + ``prompt_embeds`` (B, n, D) + EOS, pooled at EOS."""
        from transformers.masking_utils import create_causal_mask

        text = self.model.text_model
        batch = prompt_embeds.shape[0]
        bos = self.token_embedding[BOS_ID].expand(batch, 1, -1)
        eos = self.token_embedding[EOS_ID].expand(batch, 1, -1)
        hidden = text.embeddings(inputs_embeds=torch.cat([bos, prompt_embeds, eos], dim=1))
        mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        pooled = text.final_layer_norm(hidden)[:, -1]
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def invert(self, image: Image.Image, config: PezConfig,
               should_stop: Callable[[], bool] | None = None) -> PezResult:
        """Run PEZ on ``image``. ``should_stop`` is asked at every step: True raises ``EncodeCancelledError``
        (the client left); past ``config.timeout_s`` the best prompt so far is returned."""
        started = time.monotonic()
        target = self.image_features(image)
        allowed = torch.tensor(config.vocab or [i for i in range(VOCAB_SIZE) if i not in (BOS_ID, EOS_ID)])
        allowed = allowed.to(self.device)
        table = self.token_embedding[allowed]  # (A, D)
        table_unit = torch.nn.functional.normalize(table, dim=-1)

        def project(soft: torch.Tensor) -> torch.Tensor:
            scores = torch.nn.functional.normalize(soft, dim=-1) @ table_unit.T
            return scores.argmax(dim=-1)  # indices into ``allowed``

        generator = torch.Generator().manual_seed(config.seed)
        start = torch.randint(len(allowed), (1, config.n_tokens), generator=generator).to(self.device)
        soft = table[start].detach().clone().float().requires_grad_(True)
        optimizer = torch.optim.AdamW([soft], lr=config.lr, weight_decay=config.weight_decay)
        best = PezResult(ids=(), cosine=float("-inf"), step=-1)
        for step in range(config.steps + 1):
            if should_stop is not None and should_stop():
                raise EncodeCancelledError(f"PEZ stopped at step {step}: the client went away")
            out_of_time = config.timeout_s is not None and time.monotonic() - started > config.timeout_s and step > 0
            with torch.no_grad():
                nearest = project(soft)
            hard = table[nearest].to(soft.dtype)
            straight_through = soft + (hard - soft).detach()
            cosine = (self.text_features(straight_through.to(table.dtype)) * target).sum()
            if cosine.item() > best.cosine:
                ids = tuple(int(i) for i in allowed[nearest[0]].tolist())
                best = PezResult(ids=ids, cosine=float(cosine.item()), step=step)
            if out_of_time:
                log.warning("PEZ time budget (%.0f s) ran out after %d of %d steps; keeping the best prompt so far "
                            "(cosine %.3f)", config.timeout_s, step, config.steps, best.cosine)
                break
            if step == config.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            (1.0 - cosine).backward()
            optimizer.step()
        return PezResult(ids=best.ids, cosine=best.cosine, step=best.step, steps_run=step)
