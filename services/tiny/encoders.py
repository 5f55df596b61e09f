"""Tiny randomly initialised CLIP and BLIP models for the encoder side.

The model id ``"tiny"`` in ``TEXTSKETCH_CLIP_MODEL`` / ``TEXTSKETCH_CAPTION_MODEL``
(or the encoder's selection model) stands for these: they are built in code
with a fixed seed, saved with ``save_pretrained`` under the cache folder, and
loaded back by path through the same ``from_pretrained`` calls the real
checkpoints use. Tests and the offline demo use them; their outputs carry no
meaning.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from services.bitstream.vocabulary import BOS_ID, EOS_ID, VOCAB_SIZE

TINY_MODEL_ID = "tiny"
TINY_ENCODERS_VERSION = 1

TINY_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "photo",
    "cat",
    "dog",
    "man",
    "woman",
    "street",
    "red",
    "blue",
    "sky",
    "tree",
    "house",
    "car",
    "beach",
]


# The `# nosec` marks below are bandit's B105/B106 false positives: tokenizer special
# tokens and token ids of these test models, not passwords.


_TOY_WIDTHS = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}


def _toy_vision(layers: int) -> dict:
    """A vision tower of toy widths on 32x32 images in 8x8 patches."""
    return {**_TOY_WIDTHS, "num_hidden_layers": layers, "image_size": 32, "patch_size": 8}


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """A 2-layer CLIP with the real 49,408-token vocabulary and 32x32 images."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            **_TOY_WIDTHS,
            "vocab_size": VOCAB_SIZE,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": 1,  # nosec B105
        },
        vision_config=_toy_vision(layers=2),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def build_tiny_blip(directory: Path, seed: int = 0) -> Path:
    """A 1-layer BLIP captioner with a 24-word vocabulary and 32x32 images."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + TINY_WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", do_lower_case=True)  # noqa: S106  # nosec B106
    torch.manual_seed(seed)
    config = BlipConfig(
        text_config={
            **_TOY_WIDTHS,
            "vocab_size": len(vocab),
            "num_hidden_layers": 1,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "pad_token_id": 0,  # nosec B105
            "bos_token_id": vocab["[DEC]"],
            "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
        },
        vision_config=_toy_vision(layers=1),
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


_BUILDERS = {"clip": build_tiny_clip, "caption": build_tiny_blip}


def resolve_model_id(model_id: str, kind: str, cache_dir: Path) -> str:
    """``model_id`` unchanged, or for ``"tiny"`` the folder of the built tiny ``kind`` model."""
    if model_id != TINY_MODEL_ID:
        return model_id
    target = Path(cache_dir) / f"tiny-{kind}-v{TINY_ENCODERS_VERSION}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tiny-{kind}-", dir=target.parent))
        _BUILDERS[kind](staging)
        try:
            os.rename(staging, target)  # atomic: a concurrent builder's copy wins, ours is dropped
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
