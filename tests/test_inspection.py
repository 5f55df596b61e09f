"""services.inspection and ``textsketch info --sketch``: the golden payloads described and their sketch drawn."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from services.bitstream.container import parse
from services.cli import main
from services.errors import BitstreamError
from services.inspection import NoSketchError, inspect_payload, payload_sketch, sketch_png
from tests.paths import GOLDEN


def golden(name: str) -> tuple[bytes, dict]:
    return (GOLDEN / f"{name}.bin").read_bytes(), json.loads((GOLDEN / f"{name}.json").read_text())


def test_inspect_describes_the_golden_pics_payload():
    data, record = golden("payload_v2_pics")
    info = inspect_payload(data)
    assert (info.version, info.profile_id, info.profile, info.mode) == (2, 1, "sd21-hed", "PICS")
    assert (info.width, info.height, info.working_width, info.working_height) == (768, 512, 768, 512)
    assert info.token_ids == tuple(record["token_ids"])
    assert (info.prompt_bytes, info.sketch_bytes, info.overhead_bytes) == (
        record["prompt_bytes"], record["sketch_bytes"], record["overhead_bytes"])
    assert info.bytes == len(data) == info.prompt_bytes + info.sketch_bytes + info.overhead_bytes
    assert info.bpp == pytest.approx(len(data) * 8 / (768 * 512), abs=1e-6)
    assert info.prompt_text and info.prompt_text == info.prompt_text.strip()
    assert json.loads(json.dumps(info.to_dict()))["token_ids"] == record["token_ids"]


def test_the_sketch_is_the_decoders_line_map_at_the_working_size():
    data, record = golden("payload_v2_pics")
    lines = payload_sketch(parse(data))
    assert lines.shape == (512, 768) and lines.dtype == np.uint8
    assert hashlib.sha256(lines.tobytes()).hexdigest() == record["sketch_map_sha256"]
    with Image.open(io.BytesIO(sketch_png(data))) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "L", (768, 512))
        assert np.array_equal(np.asarray(png), lines)


def test_pic_payloads_have_no_sketch_and_bad_bytes_are_bitstream_errors():
    pic, _ = golden("payload_v2_pic")
    with pytest.raises(NoSketchError, match="PIC"):
        sketch_png(pic)
    assert inspect_payload(pic).sketch_bytes == 0
    with pytest.raises(BitstreamError):
        inspect_payload(b"\x89PNG not a payload")
    # limits: the decoder's own checks run before anything is drawn
    pics, _ = golden("payload_v2_pics")
    with pytest.raises(BitstreamError, match="max_working_pixels"):
        sketch_png(pics, max_working_pixels=768 * 512 - 1)


def test_cli_info_writes_the_decoded_sketch(tmp_path, capsys):
    data, record = golden("payload_v2_pics")
    out = tmp_path / "sub" / "sketch.png"
    assert main(["info", str(GOLDEN / "payload_v2_pics.bin"), "--json", "--sketch", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sketch_file"] == str(out) and info["sketch_bytes"] == record["sketch_bytes"]
    with Image.open(out) as png:
        assert png.size == (768, 512)
        assert hashlib.sha256(np.asarray(png).tobytes()).hexdigest() == record["sketch_map_sha256"]


def test_cli_info_sketch_of_a_pic_payload_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "sketch.png"
    assert main(["info", str(GOLDEN / "payload_v2_pic.bin"), "--sketch", str(out)]) == 1
    assert "PIC payload carries no sketch" in capsys.readouterr().err
    assert not out.exists()
