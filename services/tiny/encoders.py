"""Tiny randomly initialised CLIP and BLIP models for the encoder side.

The model id ``"tiny"`` in ``TEXTSKETCH_CLIP_MODEL`` / ``TEXTSKETCH_CAPTION_MODEL``
(or the encoder's selection model) stands for these: they are built in code
with a fixed seed, saved with ``save_pretrained`` under the cache folder, and
loaded back by path through the same ``from_pretrained`` calls the real
checkpoints use. Tests and the offline demo use them; their outputs carry no
meaning.

The caption model id ``"random-blip-base"`` stands for a full-size BLIP-base
captioner (224 M parameters, 384x384 images: the architecture and compute of
``Salesforce/blip-image-captioning-base``) with random weights, for CPU
benchmarks where the real weights are out of reach. Its captions are arbitrary
words but a deterministic function of the image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from services.bitstream.vocabulary import BOS_ID, EOS_ID, VOCAB_SIZE

TINY_MODEL_ID = "tiny"
RANDOM_BLIP_BASE_ID = "random-blip-base"
TINY_ENCODERS_VERSION = 1
# 3: the image encoder initialised like the rest of the model (std 0.02), not with transformers' BLIP default 1e-10
RANDOM_BLIP_BASE_VERSION = 3
VISION_INIT_STD = 0.02

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


def build_tiny_blip(directory: Path, seed: int = 0, init_std: float | None = None) -> Path:
    """A 1-layer BLIP captioner with a 24-word vocabulary and 32x32 images.

    ``init_std``: the std the text decoder's and the image encoder's weights are drawn with. By default
    (transformers': 0.02, and 1e-10 for BLIP's image encoder) every image gets the same caption; 0.1 gives this
    tiny model captions that differ from image to image."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + TINY_WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", do_lower_case=True)  # noqa: S106  # nosec B106
    torch.manual_seed(seed)
    spread = {} if init_std is None else {"initializer_range": init_std}
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
            **spread,
        },
        vision_config=_toy_vision(layers=1) | spread,
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _blip_base_vocab() -> dict[str, int]:
    """30,524 entries at BLIP-base's ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, [DEC] 30522;
    common English words (wordfreq) everywhere else, so captions read as words and tokenise like text."""
    import wordfreq
    from transformers import BlipConfig

    text = BlipConfig().text_config
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", text.sep_token_id: "[SEP]", 103: "[MASK]",
                text.bos_token_id: "[DEC]"}
    words = (w for w in wordfreq.top_n_list("en", 100_000) if w.isascii() and w.isalpha())
    return {specials[i] if i in specials else next(words): i for i in range(text.vocab_size)}


def build_random_blip_base(directory: Path, seed: int = 0) -> Path:
    """A full-size BLIP-base captioner with random weights (transformers' ``BlipConfig`` defaults: ViT-B/16 on
    384x384 images, 12-layer BERT-base decoder with cross-attention, 30,524-token vocabulary) and its processor,
    saved to ``directory`` with ``save_pretrained``; load it back with ``from_pretrained(directory)``.

    Same compute as ``Salesforce/blip-image-captioning-base``; for benchmarks, not for captions. One change from
    transformers' initialisation: the image encoder's weights are drawn with std ``VISION_INIT_STD`` (as the text
    decoder's) instead of BLIP's vision default 1e-10, which gives every Kodak image the same caption; with 0.02
    each image gets its own (a caption agreement over many images then compares many captions). Building takes
    about 10 s and 0.9 GB; ``resolve_model_id(RANDOM_BLIP_BASE_ID, "caption", cache_dir)`` builds it once into the
    cache folder and returns that folder.
    """
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(vocab=_blip_base_vocab(), bos_token="[DEC]", do_lower_case=True)  # noqa: S106  # nosec B106
    torch.manual_seed(seed)
    config = BlipConfig(vision_config={"initializer_range": VISION_INIT_STD})
    BlipForConditionalGeneration(config).save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": 384, "width": 384})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


# (model id, kind) -> (builder, version of what it builds: a new version is built beside the old folder)
_BUILDERS = {
    (TINY_MODEL_ID, "clip"): (build_tiny_clip, TINY_ENCODERS_VERSION),
    (TINY_MODEL_ID, "caption"): (build_tiny_blip, TINY_ENCODERS_VERSION),
    (RANDOM_BLIP_BASE_ID, "caption"): (build_random_blip_base, RANDOM_BLIP_BASE_VERSION),
}


def resolve_model_id(model_id: str, kind: str, cache_dir: Path) -> str:
    """``model_id`` unchanged, or for ``"tiny"`` (and ``"random-blip-base"`` as a caption model) the cache folder
    the random model is built into once."""
    if (model_id, kind) not in _BUILDERS:
        return model_id
    builder, version = _BUILDERS[model_id, kind]
    target = Path(cache_dir) / f"{model_id}-{kind}-v{version}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}-{kind}-", dir=target.parent))
        builder(staging)
        try:
            os.rename(staging, target)  # atomic: a concurrent builder's copy wins, ours is dropped
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
