"""PSNR, MS-SSIM, the learned metrics' load-or-skip behaviour, FID/KID maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from services.eval import fid, perceptual
from services.eval.metrics import MS_SSIM_MIN_SIDE, ms_ssim, ms_ssim_arrays, psnr
from services.eval.suite import MetricSuite
from services.settings import CodecSettings

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as pytorch_msssim uses them
SSIM_K1 = 0.01


def photo(seed: int = 0, size: tuple[int, int] = (192, 176)) -> Image.Image:
    """A smooth random image with some structure (blurred noise plus a bar)."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    array = np.asarray(image).copy()
    array[height // 3 : height // 3 + 6, :, :] = 250
    return Image.fromarray(array)


def flat(value: int, size: tuple[int, int] = (200, 200)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def noisy(image: Image.Image, sigma: float, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = np.asarray(image, dtype=np.float64) + rng.normal(0, sigma, size=np.asarray(image).shape)
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))


def test_psnr_identical_is_inf_and_known_offset():
    image = photo()
    assert psnr(image, image) == math.inf
    # A uniform offset of 10 everywhere: MSE = 100.
    assert psnr(flat(100), flat(110)) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    assert psnr(flat(0, (4, 4)), flat(255, (4, 4))) == pytest.approx(0.0, abs=1e-9)


def test_ms_ssim_identical_is_one():
    image = photo()
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    grey = np.asarray(image)[..., 0]
    assert ms_ssim_arrays(grey, grey) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_flat_images_match_the_luminance_formula():
    # Constant images: zero variance, so every contrast-structure term is 1 and
    # only the last scale's luminance term l = (2ab + C1) / (a^2 + b^2 + C1) remains.
    # (256 px: even at every scale, so 2x pooling never pads the constant image.)
    a, b = 100.0, 140.0
    c1 = (SSIM_K1 * 255) ** 2
    luminance = (2 * a * b + c1) / (a * a + b * b + c1)
    size = (256, 256)
    # float32 arithmetic (as CompressAI runs it): agreement to 1e-4, far below the 3 decimals reported.
    assert ms_ssim(flat(100, size), flat(140, size)) == pytest.approx(luminance ** MS_SSIM_WEIGHTS[-1], abs=1e-4)


def test_ms_ssim_falls_with_noise_and_is_symmetric():
    image = photo()
    light, heavy = noisy(image, 5), noisy(image, 40)
    assert 1.0 > ms_ssim(image, light) > ms_ssim(image, heavy) > 0.0
    assert ms_ssim(image, heavy) == pytest.approx(ms_ssim(heavy, image), abs=1e-6)
    assert psnr(image, light) > psnr(image, heavy)


def test_ms_ssim_guards_small_images():
    # Five scales of an 11-pixel window need a shorter side of 161 px (160 / 16 = 10 < 11).
    assert MS_SSIM_MIN_SIDE == 161
    edge = photo(size=(200, 161))
    assert ms_ssim(edge, edge) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 161x161"):
        ms_ssim(flat(1, (160, 300)), flat(2, (160, 300)))
    small = photo(size=(40, 32))  # the suite records such images as not scored instead of failing
    suite = MetricSuite(CodecSettings(device="cpu"), ("psnr", "ms_ssim"))
    scores = suite.pair(small, noisy(small, 30))
    assert math.isnan(scores["ms_ssim"]) and "161" in suite.skipped["ms_ssim"]


def test_size_mismatch_says_what_to_do():
    with pytest.raises(ValueError, match="resize the reconstruction"):
        psnr(flat(1, (20, 20)), flat(1, (21, 20)))


def test_suite_always_scores_psnr_and_ms_ssim_and_explains_skips():
    suite = MetricSuite(CodecSettings(device="cpu", clip_model="/nonexistent/clip"))
    scores = suite.pair(photo(), noisy(photo(), 10))
    assert {"psnr", "ms_ssim"} <= set(scores)
    assert "clip_distance" in suite.skipped  # no such folder: skipped, not raised
    assert "TEXTSKETCH_CLIP_MODEL" in suite.skipped["clip_distance"]
    for name in ("lpips", "dists", "fid", "kid"):
        # Either the optional package and weights are here, or the reason is recorded.
        assert (name in suite.active) != (name in suite.skipped)
        if name in suite.skipped:
            assert len(suite.skipped[name]) > 20
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSuite(CodecSettings(), ("psnr", "bogus")).load()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIP saved with its image processor, loaded back by from_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_distance_with_a_local_model(tiny_clip):
    suite = MetricSuite(CodecSettings(device="cpu", clip_model=str(tiny_clip)), ("psnr", "ms_ssim", "clip_distance"))
    assert "clip_distance" in suite.active and not suite.skipped
    image, other = photo(0), Image.fromarray(255 - np.asarray(photo(5)))
    same = suite.pair(image, image)["clip_distance"]
    different = suite.pair(image, other)["clip_distance"]
    assert same == pytest.approx(0.0, abs=1e-5)
    assert 0.0 < different <= 2.0


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert fid.set_scores(a, a)["fid"] == pytest.approx(0.0, abs=1e-6)
    # Same covariance, means 2 apart in one coordinate: FID ~ 4.
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0.0, 0.0])
    assert fid.set_scores(a, b)["fid"] == pytest.approx(4.0, abs=0.3)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same = fid.set_scores(a, b)
    shifted = fid.set_scores(a, b + 1.0)
    assert abs(same["kid"]) < 0.05
    assert shifted["kid"] > 0.5


def test_kid_subsets_are_smaller_than_the_set_so_their_spread_is_real():
    # Kodak gives 24 x 8 = 192 patches: a subset as large as the set made every subset the same
    # set and the reported std always 0.
    assert fid.kid_subset_size(192) == 96
    assert fid.kid_subset_size(10_000) == fid.KID_SUBSET_SIZE
    rng = np.random.default_rng(2)
    scores = fid.set_scores(rng.normal(size=(192, 8)), rng.normal(size=(192, 8)) + 0.5)
    assert scores["kid_subset_size"] == 96
    assert scores["kid_std"] > 0.0
    # Subsets come from a fixed seed: the same features give the same KID.
    real, fake = np.random.default_rng(4).normal(size=(2, 192, 8))
    assert fid.set_scores(real, fake + 0.5) == fid.set_scores(real, fake + 0.5)


def test_patches_follow_the_shifted_grid():
    assert len(fid.patches(photo(size=(768, 512)))) == 6 + 2
    assert fid.patches(photo(size=(100, 80)))[0].shape == (80, 100, 3)


def test_set_metric_groups_with_a_small_feature_extractor():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(2))
    metric = fid.SetMetric(extractor=lambda batch: conv(batch).flatten(1), patch=32)
    images = [photo(seed, (64, 64)) for seed in range(3)]  # 5 patches each: 15 per set
    for image in images:
        metric.add("same", image, image)
        metric.add("noisy", image, noisy(image, 60))
    scores = metric.compute()
    assert scores["same"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert scores["noisy"]["fid"] > scores["same"]["fid"]
    assert scores["same"]["fid_patches"] == 3 * (4 + 1)


def test_missing_optional_packages_raise_metric_unavailable(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_optional(name, *args, **kwargs):
        if name.split(".")[0] in ("lpips", "DISTS_pytorch", "pytorch_fid"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optional)
    settings = CodecSettings(device="cpu")
    for name, hint in (("lpips", "pip install lpips"), ("dists", "pip install DISTS_pytorch")):
        with pytest.raises(perceptual.MetricUnavailable, match=hint):
            perceptual.load_pair_metric(name, settings)
    with pytest.raises(perceptual.MetricUnavailable, match="pytorch-fid"):
        fid.load_set_metric(settings)
