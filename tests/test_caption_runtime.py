"""The fast caption runtimes (``TEXTSKETCH_CAPTION_RUNTIME``: bf16, int8, int8-bf16) against fp32, on a tiny
BLIP whose random captions depend on the image, over the repository's images and their quarters.

Greedy decoding of a random model sits on nearly tied logits, so int8 rounding changes some
captions. Measured here on an AMX CPU: int8 and int8-bf16 8-9 of 15 identical, mean token edit
distance 2.3-2.5, max 11 of up to 20 tokens; bf16 (fp32 decoder) 15 of 15; the bounds below leave room for other CPUs' int8 kernels and still
fail a runtime that moves captions much further (a broken one shares almost no caption).
Full-size figures: bench/caption_bench.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.devices import native_bf16_cpu
from services.eval.caption_agreement import CaptionAgreement, CaptionPair, caption_agreement, token_edit_distance
from services.prompt.caption import Captioner, CaptionRuntime, resolve_runtime
from services.prompt.sources import caption_text
from services.settings import CodecSettings
from services.tiny.encoders import _blip_base_vocab, build_tiny_blip
from tests.paths import EXAMPLES

MAX_NEW_TOKENS = 20
TINY_INIT_STD = 0.1  # captions that differ from image to image (see build_tiny_blip)
MIN_IDENTICAL_SHARE = 0.4
MIN_IDENTICAL_SHARE_BF16 = 0.8  # bf16 image encoder, fp32 decoder: 15 of 15 identical here
MAX_MEAN_EDIT_DISTANCE = 4.0


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return str(build_tiny_blip(tmp_path_factory.mktemp("caption-runtime") / "blip",
                               init_std=TINY_INIT_STD))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Each repository image and its four quarters (15 images)."""
    out = []
    for path in sorted(EXAMPLES.glob("*.png")):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        out.append(image)
        out += [image.crop((x * w // 2, y * h // 2, (x + 1) * w // 2, (y + 1) * h // 2)) for x in (0, 1) for y in (0, 1)]
    return out


@pytest.fixture(scope="module")
def fp32(blip) -> Captioner:
    return Captioner(blip, "cpu", runtime="fp32")


def test_edit_distance():
    assert token_edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert token_edit_distance([1, 2, 3], [1, 3]) == 1
    assert token_edit_distance([1, 2, 3], [4, 2, 3, 5]) == 2
    assert token_edit_distance([], [7, 8]) == 2
    agreement = CaptionAgreement((CaptionPair((1, 2), (1, 2)), CaptionPair((1, 2), (3,))))
    assert (agreement.identical, agreement.identical_share, agreement.max_edit_distance) == (1, 0.5, 2)
    assert agreement.mean_edit_distance == 1.0
    assert [pair.common_prefix for pair in agreement.pairs] == [2, 0]
    assert CaptionPair((1, 2, 3), (1, 2)).common_prefix == 2


def test_fp32_captions_are_deterministic_and_depend_on_the_image(fp32, images):
    captions = [tuple(fp32.caption_ids(image, MAX_NEW_TOKENS)) for image in images]
    assert captions == [tuple(fp32.caption_ids(image, MAX_NEW_TOKENS)) for image in images]
    assert len(set(captions)) >= 10  # an image-blind model would make the agreement one comparison


@pytest.mark.parametrize("runtime, min_identical_share", [("bf16", MIN_IDENTICAL_SHARE_BF16),
                                                          ("int8", MIN_IDENTICAL_SHARE),
                                                          ("int8-bf16", MIN_IDENTICAL_SHARE)])
def test_fast_runtime_captions_stay_close_to_fp32(fp32, blip, images, runtime, min_identical_share):
    fast = Captioner(blip, "cpu", runtime=runtime)
    agreement = caption_agreement(fp32, fast, images, MAX_NEW_TOKENS)
    assert agreement.distinct_reference_captions >= 10
    assert agreement.identical_share >= min_identical_share, agreement.summary()
    assert agreement.mean_edit_distance <= MAX_MEAN_EDIT_DISTANCE, agreement.summary()
    assert agreement.max_edit_distance <= MAX_NEW_TOKENS


def test_int8_quantises_every_linear_layer(blip):
    model = Captioner(blip, "cpu", runtime="int8").model
    kinds = {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.ao.nn.quantized.dynamic.Linear))}
    assert kinds == {torch.ao.nn.quantized.dynamic.Linear}


@pytest.mark.parametrize("runtime, decoder_linear", [("bf16", torch.nn.Linear),
                                                     ("int8-bf16", torch.ao.nn.quantized.dynamic.Linear)])
def test_bf16_runtimes_run_the_image_encoder_in_bfloat16_and_hand_float32_on(blip, runtime, decoder_linear):
    model = Captioner(blip, "cpu", runtime=runtime).model
    assert {p.dtype for p in model.vision_model.parameters()} == {torch.bfloat16}
    decoder_linears = {type(m) for m in model.text_decoder.modules() if hasattr(m, "in_features")}
    assert decoder_linears == {decoder_linear}
    pixels = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        out = model.vision_model(pixel_values=pixels)
    assert out.last_hidden_state.dtype == torch.float32 and out[0].dtype == torch.float32


def test_generation_uses_the_kv_cache(fp32, images):
    """After the first step the decoder sees one new token per step, with the cache of the earlier ones."""
    calls = []
    hook = fp32.model.text_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((kwargs["input_ids"].shape[1], kwargs.get("past_key_values")
                                                   or kwargs.get("cache"))), with_kwargs=True)
    try:
        ids = fp32.caption_ids(images[0], MAX_NEW_TOKENS)
    finally:
        hook.remove()
    assert len(calls) >= 2 and len(ids) >= 1
    assert all(length == 1 and cache is not None for length, cache in calls[1:])


def test_token_cap_is_the_setting(blip, images, tmp_path):
    settings = CodecSettings(caption_model=blip, device="cpu", cache_dir=tmp_path, caption_runtime="fp32",
                             caption_max_new_tokens=3)
    fp32 = Captioner(blip, "cpu", runtime="fp32")
    long = fp32.caption_ids(images[0], MAX_NEW_TOKENS)
    assert len(long) > 3  # the cap below does cut this caption
    assert caption_text(images[0], settings) == fp32.processor.decode(long[:3], skip_special_tokens=True).strip()
    assert CodecSettings().caption_max_new_tokens == 20
    with pytest.raises(ValueError):
        CodecSettings(caption_max_new_tokens=0)


def test_runtime_resolution():
    assert resolve_runtime("auto") is (CaptionRuntime.INT8_BF16 if native_bf16_cpu() else CaptionRuntime.INT8)
    assert resolve_runtime("int8", "cuda:0") is CaptionRuntime.FP32
    assert resolve_runtime("fp32") is CaptionRuntime.FP32
    assert CodecSettings().caption_runtime == "auto"
    with pytest.raises(ValueError, match="unknown caption runtime 'fp16'"):
        resolve_runtime("fp16")


def test_blip_base_vocabulary_keeps_the_special_ids():
    from transformers import BlipConfig

    vocab = _blip_base_vocab()
    text = BlipConfig().text_config
    assert len(vocab) == text.vocab_size == len(set(vocab.values()))
    assert (vocab["[PAD]"], vocab["[SEP]"], vocab["[DEC]"]) == (text.pad_token_id, text.sep_token_id, text.bos_token_id)
