"""The HED fast path (bfloat16 trunk, ``TEXTSKETCH_HED_PRECISION``) sends the sketch the
float32 path sends: on every repository image and quality level, the decoded sketch scores
F >= 0.95 within 2 px against the float32 one and the body size stays within 3 % (or one
byte, where 3 % of a small body is less than a byte). Figures on Kodak: bench/encoder_bench.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.devices import native_bf16_cpu
from services.eval.sketch_agreement import MAX_BYTES_CHANGE, MIN_F_SCORE, sketch_agreement
from services.settings import CodecSettings
from services.sketch.hed import HedPrecision, hed_edge_map, load_hed, preprocess, resolve_precision
from services.sketch.hed_weights import find_weights
from services.sketch.lossy import QUALITY_LEVELS
from tests.paths import EXAMPLES

needs_weights = pytest.mark.skipif(
    find_weights(CodecSettings()) is None, reason="HED weights not set up: run `textsketch fetch-weights --env`"
)


@needs_weights
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.png")))
def test_bf16_sketch_agrees_with_fp32_at_every_level(name):
    image = Image.open(EXAMPLES / name).convert("RGB")
    reference = hed_edge_map(image, CodecSettings(hed_precision="fp32"))
    fast = hed_edge_map(image, CodecSettings(hed_precision="bf16"))
    assert not np.array_equal(reference, fast)  # the paths do differ: the check below is not vacuous
    rows = sketch_agreement(reference, fast)
    assert [r.quality for r in rows] == list(QUALITY_LEVELS)
    for row in rows:
        assert row.f_score >= MIN_F_SCORE, row
        byte_bound = max(MAX_BYTES_CHANGE * row.reference_bytes, 1)
        assert abs(row.fast_bytes - row.reference_bytes) <= byte_bound, row


@needs_weights
def test_models_per_precision_are_cached_and_laid_out_for_their_kernels():
    fp32 = load_hed(CodecSettings(hed_precision="fp32"))
    bf16 = load_hed(CodecSettings(hed_precision="bf16"))
    assert fp32 is load_hed(CodecSettings(hed_precision="fp32"))
    assert (fp32.precision, bf16.precision) == (HedPrecision.FP32, HedPrecision.BF16)
    weight = bf16.blocks[1][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert fp32.blocks[1][0].weight.is_contiguous()
    assert load_hed(CodecSettings(hed_precision="auto")).precision is resolve_precision("auto")


def test_channels_last_preprocessing_has_the_same_values():
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    planar, packed = preprocess(image), preprocess(image, channels_last=True)
    assert planar.is_contiguous() and packed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(planar, packed)
    # BGR order minus the Caffe mean, no scaling
    assert planar[0, 0, 3, 5].item() == pytest.approx(float(pixels[3, 5, 2]) - 104.00699, abs=1e-4)


def test_auto_picks_bf16_only_on_cpus_with_native_bfloat16():
    expected = HedPrecision.BF16 if native_bf16_cpu() else HedPrecision.FP32
    assert resolve_precision("auto") is expected
    assert resolve_precision("fp32") is HedPrecision.FP32
    with pytest.raises(ValueError, match="unknown HED precision 'fp16'"):
        resolve_precision("fp16")
