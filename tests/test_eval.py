"""The evaluation harness end to end: tiny profile, two small images, real stages and coders."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.bitstream.container import Mode, parse
from services.eval.run import list_images, main, run_eval
from services.settings import CodecSettings

SIZE = (192, 176)  # above MS-SSIM's 161-pixel minimum, still a 64-pixel working size
TEXTS = {"scene0": "a red house with a white door", "scene1": "a boat on a lake under a blue sky"}


class SmallSettings(CodecSettings):
    """The tiny-hed profile at a 64-pixel working size, so the whole pipeline runs in seconds."""

    def model_profile(self):
        return replace(super().model_profile(), working_short_side=64)


def scene(seed: int, size=SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(40, 200, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        draw.rectangle([x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 30))],
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-images")
    for index in range(2):
        scene(index).save(folder / f"scene{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def run(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    settings = SmallSettings(profile="tiny-hed", device="cpu")
    summary = run_eval(image_dir, out, settings, modes=("pic", "pics"), prompt_source="given",
                       captions=TEXTS, progress=False)
    return summary, out


def test_outputs_exist(run):
    summary, out = run
    for name in ("per_image.csv", "per_image.json", "summary.json", "summary.md", "rd_psnr.png", "rd_ms_ssim.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert set(summary.files) >= {"csv", "json", "summary_md", "rd_psnr"}
    # 2 images x 2 modes x (codec + webp + jpeg)
    assert len(summary.records) == 12
    for record in summary.records:
        saved = Image.open(out / record.reconstruction)
        assert saved.size == (record.width, record.height) == SIZE


def test_rates_are_consistent(run):
    summary = run[0]
    codec = [r for r in summary.records if r.method == "textsketch"]
    assert {(r.image, r.mode) for r in codec} == {(f"scene{i}.png", m) for i in range(2) for m in ("pic", "pics")}
    for record in codec:
        assert record.bpp == pytest.approx(record.n_bytes * 8 / (SIZE[0] * SIZE[1]))
        # Everything beyond the prompt and sketch bodies is the container: at most 16 bytes.
        overhead = record.n_bytes - record.prompt_bytes - record.sketch_bytes
        assert 0 < overhead <= 16
        assert (record.sketch_bytes > 0) == (record.mode == "pics")
        assert record.prompt_text == TEXTS[record.image[:-4]]
        assert record.encode_ms > 0 and record.decode_ms > 0
        assert set(record.metrics) >= {"psnr", "ms_ssim"}
    for record in summary.records:
        if record.method in ("webp", "jpeg"):
            payload = next(r for r in codec if (r.image, r.mode) == (record.image, record.mode))
            assert record.budget == payload.n_bytes
            assert record.n_bytes <= record.budget
            assert record.fits == (record.n_bytes > 0)


def test_csv_json_and_table_agree(run):
    summary, out = run
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(summary.records)
    assert [int(r["n_bytes"]) for r in rows] == [r.n_bytes for r in summary.records]
    per_image = json.loads((out / "per_image.json").read_text())
    assert [r["bpp"] for r in per_image] == pytest.approx([r.bpp for r in summary.records])
    stored = json.loads((out / "summary.json").read_text())
    assert stored["settings"]["profile"] == "tiny-hed" and stored["settings"]["n_images"] == 2
    for group in stored["groups"]:
        members = [r for r in rows if r["method"] == group["method"] and r["mode"] == group["mode"]]
        assert group["n"] == len(members) == 2
        assert group["bpp"] == pytest.approx(np.mean([float(r["bpp"]) for r in members]))
        assert group["ms_ssim"] == pytest.approx(np.mean([float(r["m_ms_ssim"]) for r in members]))
    table = (out / "summary.md").read_text()
    for method in ("textsketch", "webp", "jpeg"):
        for mode in ("pic", "pics"):
            assert f"| {method} | {mode} |" in table
    # Metrics that could not load are listed with their reason, never silently dropped.
    for name, reason in summary.skipped.items():
        assert f"- {name}: {reason}" in table


def test_payloads_decode_to_what_was_measured(run, image_dir):
    """Re-encoding one image gives the bytes the harness recorded (deterministic encoder)."""
    from services.codec import EncodeOptions, encode_image

    summary = run[0]
    settings = SmallSettings(profile="tiny-hed", device="cpu")
    image = Image.open(image_dir / "scene1.png").convert("RGB")
    result = encode_image(image, settings, EncodeOptions(mode=Mode.PICS, prompt_source="given", text=TEXTS["scene1"]))
    recorded = next(r for r in summary.records if r.method == "textsketch" and r.image == "scene1.png" and r.mode == "pics")
    assert len(result.data) == recorded.n_bytes
    assert len(parse(result.data).sketch) == recorded.sketch_bytes


def test_rate_only_command_line(image_dir, tmp_path, capsys):
    code = main([
        "--images", str(image_dir), "--out", str(tmp_path), "--profile", "tiny-hed", "--device", "cpu",
        "--modes", "pic", "--prompt-source", "given", "--text", "a red house", "--no-decode", "--no-save",
        "--metrics", "psnr", "ms_ssim", "--baselines", "webp", "--limit", "1", "--quiet",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| textsketch | pic | 1 |" in printed and "| webp | pic | 1 |" in printed
    with open(tmp_path / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["textsketch", "webp"]
    assert rows[0]["decode_ms"] == "" and "m_psnr" in rows[1]
    assert not (tmp_path / "reconstructions").exists()
    assert not math.isnan(float(rows[0]["bpp"]))


def test_bad_inputs_say_what_to_do(image_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="--images"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)
    assert [p.name for p in list_images(image_dir, limit=1)] == ["scene0.png"]
    with pytest.raises(ValueError, match="needs --text"):
        run_eval(image_dir, tmp_path, SmallSettings(profile="tiny-hed", device="cpu"), modes=("pic",),
                 prompt_source="given", decode=False, progress=False)
    with pytest.raises(ValueError, match="decoder-url"):
        run_eval(image_dir, tmp_path, CodecSettings(), encoder_url="http://127.0.0.1:9")
