"""Prompt stage: given text, captions and PEZ on tiny random models, on CPU."""

from __future__ import annotations

import pytest
from PIL import Image

from services.bitstream.text_coder import decode_token_ids, encode_token_ids
from services.bitstream.vocabulary import BOS_ID, EOS_ID, MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.errors import ModelUnavailableError
from services.prompt.pez import PezConfig, read_vocab_file
from services.prompt.sources import PromptSource, caption_text, make_prompt_ids, pez_ids
from services.prompt.tokenizer import load_tokenizer, text_to_ids
from services.settings import CodecSettings
from services.tiny.encoders import build_tiny_blip, build_tiny_clip
from tests.paths import EXAMPLES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-models")
    return {"clip": build_tiny_clip(root / "clip"), "blip": build_tiny_blip(root / "blip"), "root": root}


@pytest.fixture(scope="module")
def settings(models) -> CodecSettings:
    return CodecSettings(
        cache_dir=models["root"] / "cache",
        device="cpu",
        clip_model=str(models["clip"]),
        caption_model=str(models["blip"]),
        pez_steps=6,
        pez_tokens=16,
        pez_seed=0,
    )


@pytest.fixture(scope="module")
def image() -> Image.Image:
    with Image.open(EXAMPLES / "kodim23.png") as photo:
        return photo.convert("RGB").resize((96, 64))


def test_given_text_is_tokenised(settings):
    ids = make_prompt_ids(None, "given", settings, text="a photo of a cat")
    assert ids == [320, 1125, 539, 320, 2368]
    assert make_prompt_ids(None, PromptSource.GIVEN, settings, text="") == []


def test_given_text_is_truncated(settings):
    assert len(make_prompt_ids(None, "given", settings, text="cat " * 100)) == MAX_PROMPT_TOKENS


def test_given_without_text_and_unknown_source_fail_clearly(settings, image):
    with pytest.raises(ValueError, match="needs the prompt text"):
        make_prompt_ids(image, "given", settings)
    with pytest.raises(ValueError, match="pez, caption, given"):
        make_prompt_ids(image, "ocr", settings)
    with pytest.raises(ValueError, match="needs an image"):
        make_prompt_ids(None, "caption", settings)


def test_caption_is_deterministic_and_tokenised(settings, image):
    text = caption_text(image, settings)
    assert text  # the tiny BLIP greedily emits words of its toy vocabulary
    ids = make_prompt_ids(image, "caption", settings)
    assert ids == text_to_ids(text, load_tokenizer(settings))
    assert make_prompt_ids(image, PromptSource.CAPTION, settings) == ids
    assert decode_token_ids(encode_token_ids(ids)) == ids


def test_pez_is_deterministic_under_a_seed(settings, image):
    first = make_prompt_ids(image, "pez", settings)
    assert len(first) == settings.pez_tokens
    assert all(0 <= i < VOCAB_SIZE and i not in (BOS_ID, EOS_ID) for i in first)
    assert make_prompt_ids(image, "pez", settings) == first
    other_seed = settings.model_copy(update={"pez_seed": 1})
    assert pez_ids(image, other_seed) != first
    assert decode_token_ids(encode_token_ids(first)) == first


def test_pez_keeps_the_best_cosine_prompt(settings, image):
    from services.devices import resolve_device
    from services.prompt.sources import _pez_inverter

    inverter = _pez_inverter(settings.clip_model, resolve_device(settings.device))
    result = inverter.invert(image, PezConfig.from_settings(settings))
    import torch

    with torch.no_grad():
        embeds = inverter.token_embedding[torch.tensor([list(result.ids)])]
        cosine = float((inverter.text_features(embeds) * inverter.image_features(image)).sum())
    assert cosine == pytest.approx(result.cosine, abs=1e-5)
    assert 0 <= result.step <= settings.pez_steps
    # More steps can only keep an equal or better prompt (the search starts from the same seed).
    longer = inverter.invert(image, PezConfig(steps=12, seed=0))
    assert longer.cosine >= result.cosine


def test_pez_respects_the_allowed_vocabulary(settings, image, tmp_path):
    allowed = [320, 1125, 539, 2368, 1929, 3032, 786, 2308]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("# allowed ids\n" + "\n".join(map(str, allowed)) + "\n")
    assert read_vocab_file(vocab_file) == tuple(sorted(allowed))
    ids = make_prompt_ids(image, "pez", settings.model_copy(update={"pez_vocab": vocab_file, "pez_steps": 3}))
    assert set(ids) <= set(allowed)
    vocab_file.write_text(f"{EOS_ID}\n")
    with pytest.raises(ValueError, match="no BOS/EOS"):
        read_vocab_file(vocab_file)


def test_missing_models_raise_model_unavailable(settings, image, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ModelUnavailableError, match="TEXTSKETCH_CAPTION_MODEL"):
        make_prompt_ids(image, "caption", settings.model_copy(update={"caption_model": missing}))
    with pytest.raises(ModelUnavailableError, match="TEXTSKETCH_CLIP_MODEL"):
        make_prompt_ids(image, "pez", settings.model_copy(update={"clip_model": missing}))


def test_pez_stops_when_asked_and_keeps_the_best_prompt_when_its_time_runs_out(settings, image):
    from services.devices import resolve_device
    from services.errors import EncodeCancelledError
    from services.prompt.sources import _pez_inverter

    inverter = _pez_inverter(settings.clip_model, resolve_device(settings.device))
    asked = []

    def leave_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(EncodeCancelledError, match="client went away"):
        inverter.invert(image, PezConfig(steps=500, seed=0), leave_after_three)
    assert len(asked) == 4  # asked once per step, stopped at the first True

    budget = inverter.invert(image, PezConfig(steps=100_000, seed=0, timeout_s=0.3))
    assert 1 <= budget.steps_run < 100_000 and len(budget.ids) == 16
    full = inverter.invert(image, PezConfig(steps=5, seed=0))
    assert full.steps_run == 5
    # the codec path: EncodeOptions.should_stop reaches PEZ
    with pytest.raises(EncodeCancelledError):
        make_prompt_ids(image, "pez", settings.model_copy(update={"pez_steps": 500}), should_stop=lambda: True)
