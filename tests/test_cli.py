"""The textsketch CLI: info on the golden payload, clear errors, in-process round trip."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from services.cli import main
from tests.paths import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"


def test_info_reports_fields_bytes_and_bpp(capsys):
    assert main(["info", str(GOLDEN / "payload_v1_pics.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["profile"] == "sd21-hed" and info["mode"] == "PICS"
    assert (info["width"], info["height"], info["candidate"]) == (768, 512, 3)
    assert info["bytes"] == 24 + 300 + 16
    assert info["overhead_bytes"] == 16
    assert abs(info["bpp"] - 340 * 8 / (768 * 512)) < 1e-6


def test_info_plain_text(capsys):
    assert main(["info", str(GOLDEN / "payload_v1_pic.bin")]) == 0
    out = capsys.readouterr().out
    assert "mode" in out and "PIC" in out and "tiny" in out


def test_missing_file_and_bad_bitstream_are_clear_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.bin")]) == 1
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x89PNG not a payload")
    assert main(["info", str(bad)]) == 1
    assert "invalid payload" in capsys.readouterr().err


def test_encode_rejects_a_non_image(tmp_path, capsys):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    assert main(["encode", str(not_image), "-o", str(tmp_path / "x.bin"), "--profile", "tiny"]) == 1
    assert "not an image" in capsys.readouterr().err


def test_in_process_round_trip_with_tiny_profile(tmp_path, capsys):
    source = EXAMPLES / "kodim23.png"
    payload_file, image_file = tmp_path / "k23.bin", tmp_path / "k23.png"
    args = ["encode", str(source), "-o", str(payload_file), "--profile", "tiny",
            "--prompt-source", "given", "--text", "two parrots on a branch"]
    assert main(args) == 0
    assert main(["info", str(payload_file), "--json", "--tokens"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["profile"] == "tiny" and info["mode"] == "PICS"
    assert info["prompt_text"].strip() == "two parrots on a branch"
    assert main(["decode", str(payload_file), "-o", str(image_file)]) == 0
    with Image.open(image_file) as image:
        assert image.size == (384, 256)  # the input's size (generated at the working size, 768x512)


def test_extreme_aspect_ratio_is_refused_before_allocating(tmp_path, capsys):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (16000, 2)).save(strip)
    assert main(["encode", str(strip), "-o", str(tmp_path / "s.bin"), "--profile", "tiny",
                 "--prompt-source", "given", "--text", "x"]) == 1
    assert "aspect ratio" in capsys.readouterr().err
