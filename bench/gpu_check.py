"""One-shot GPU check of the sd21-hed decoder: full-size random weights, fp16, under 8 minutes.

Builds Stable Diffusion 2.1-base + the HED ControlNet at full size with random weights
(``services.testing.sd21``), saves them as diffusers folders, loads them through the
real ``sd21-hed`` profile path (``Reconstructor.load`` with the model-id settings), and
measures, at 768x512 and 25 steps (PICS):

- build (random init + save) and load time;
- images/s at batch 1, 2, 4, 8, the peak GPU memory of each, and the share of the GPU's
  dense fp16 peak (about 92 TFLOP per image at 768x512 with CFG + ControlNet + VAE,
  57 at 512x512; peak from a table by device name or ``--peak-tflops``);
- the largest pixel difference of a batch of 4 against decoding each job alone, with
  free batching (the CUDA default) and with deterministic mode;
- the out-of-memory split: simulated (the pipeline raises ``torch.OutOfMemoryError``
  above one image) and real (a per-process memory cap between the batch-1 and batch-2
  peaks); the split results must equal the jobs decoded alone;
- candidate rendering: the N=4 candidates of a real payload in one batch.

Every section prints its elapsed time; ``--max-seconds`` skips the sections that
would not fit and says so. Nothing is downloaded. ``--smoke`` runs every section on
the CPU with toy widths, 2 steps and 64x64 in well under a minute (the tests run it).

    HF_HUB_OFFLINE=1 python bench/gpu_check.py                  # one H100/H200
    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_check.py --smoke

Prints the JSON report and writes it to ``bench/out/gpu_check[_smoke].json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from services.bitstream.container import Mode, Payload
from services.bitstream.text_coder import encode_token_ids
from services.codec import candidate_jobs, payload_to_job
from services.prompt.tokenizer import load_tokenizer
from services.reconstruction.jobs import DecodeJob
from services.reconstruction.reconstructor import Reconstructor
from services.settings import CodecSettings
from services.sketch.coder import encode_sketch
from services.sketch.render import control_image
from services.testing.sd21 import SD21_HED, SMOKE, save_random_sd21_hed

OUT = Path(__file__).resolve().parent / "out"
# Dense fp16 tensor TFLOPS (no sparsity), first match on torch.cuda.get_device_name().
PEAK_FP16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("A100", 312.0), ("L40S", 362.0))
# TFLOP per image with CFG + ControlNet + VAE at 25 steps, by working size (issue 15).
TFLOP_PER_IMAGE = {((768, 512), 25): 92.0, ((512, 768), 25): 92.0, ((512, 512), 25): 57.0}
PROMPT_IDS = (320, 1929, 530, 518, 2390, 593, 320, 3086, 267, 1580, 1360, 539, 2390, 1884, 530, 3102)


class Budget:
    """Wall-clock guard: a section runs only if its estimated cost fits in what is left."""

    def __init__(self, max_seconds: float) -> None:
        self.started, self.max_seconds = time.perf_counter(), max_seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.max_seconds


def main() -> None:
    args = parse_args()
    device = args.device or ("cpu" if args.smoke else "cuda")
    on_cuda = device.startswith("cuda")
    budget = Budget(args.max_seconds)
    size = tuple(int(v) for v in args.size.split("x"))
    report = {"check": "gpu_check", "smoke": args.smoke, "device": device, "device_name": device_name(device),
              "versions": versions(), "settings": {"working_size": args.size, "steps": args.steps,
              "batch_sizes": args.batch_sizes, "repeats": args.repeats, "max_seconds": args.max_seconds,
              "dtype": "float16" if on_cuda else "float32", "architecture": "smoke" if args.smoke else "sd21-hed"},
              "sections": {}, "skipped_sections": []}
    peak, source = peak_tflops(report["device_name"], args.peak_tflops)
    per_image = args.tflop_per_image or TFLOP_PER_IMAGE.get((size, args.steps))
    report.update(peak_fp16_dense_tflops=peak, peak_source=source, tflop_per_image=per_image)
    print(f"gpu_check on {device} ({report['device_name']}): {args.size}, {args.steps} steps, "
          f"budget {args.max_seconds:.0f} s, peak {peak} TFLOPS ({source}), {per_image} TFLOP/image")
    folder = Path(tempfile.mkdtemp(prefix="textsketch-gpu-check-", dir=args.models_dir))
    state = {"size": size, "steps": args.steps, "per_image": per_image, "peak": peak, "s_per_image": {}}
    try:
        sections = [("build", lambda: build(args, device, folder, state)),
                    ("load", lambda: load(args, device, state)),
                    ("throughput", lambda: throughput(args, device, budget, state)),
                    ("batch_vs_alone_free", lambda: batch_vs_alone(state["reconstructor"], state)),
                    ("oom_split", lambda: oom_split(device, state)),
                    ("candidates", lambda: candidates(args, state)),
                    ("batch_vs_alone_deterministic", lambda: deterministic(args, device, state))]
        costs = {"batch_vs_alone_free": 8, "oom_split": 10, "candidates": 5, "batch_vs_alone_deterministic": 20}
        needs = {"build": None, "load": "saved"}  # what a section needs from an earlier one
        for name, run in sections:
            estimate = costs.get(name, 0) * max(state["s_per_image"].values(), default=0.0)
            need = needs.get(name, "reconstructor")
            if (need and need not in state) or not budget.allows(estimate):
                why = f"no {need} (an earlier section failed)" if need and need not in state else \
                    f"~{estimate:.1f} s would pass --max-seconds"
                report["sections"][name] = {"status": "skipped", "reason": why}
                report["skipped_sections"].append(name)
                print(f"[{budget.elapsed():6.1f} s] {name}: SKIPPED ({why})")
                continue
            started = time.perf_counter()
            try:
                result = {"status": "ok", **run()}
            except Exception as error:  # report and go on: one failed section must not hide the others
                result = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
            result["seconds"] = round(time.perf_counter() - started, 2)
            report["sections"][name] = result
            print(f"[{budget.elapsed():6.1f} s] {name}: {result['status']} in {result['seconds']} s "
                  f"{json.dumps({k: v for k, v in result.items() if k not in ('status', 'seconds')})}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if on_cuda:  # the largest of every batch size's peak and what came after the last reset
        peaks = [*state.get("peak_bytes", {}).values(), torch.cuda.max_memory_allocated()]
        report["peak_memory_gib"] = round(max(peaks) / 2**30, 2)
    report["checks"] = checks(report["sections"])
    report["elapsed_s"] = round(budget.elapsed(), 1)
    out = Path(args.out) if args.out else OUT / f"gpu_check{'_smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out} ({report['elapsed_s']} s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, toy widths, 2 steps, 64x64: every section, fast")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--size", default=None, help="working WxH (default 768x512; smoke 64x64)")
    parser.add_argument("--steps", type=int, default=None, help="default 25 (smoke 2)")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per batch size (default 3; smoke 1)")
    parser.add_argument("--max-seconds", type=float, default=None, help="wall-clock budget (default 420; smoke 120)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense fp16 peak of this GPU (overrides the table)")
    parser.add_argument("--tflop-per-image", type=float, default=None, help="work per image (default: issue 15's figures)")
    parser.add_argument("--models-dir", default=None, help="where the random-weight folders are written (temporary)")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    defaults = {"size": ("768x512", "64x64"), "steps": (25, 2), "repeats": (3, 1), "max_seconds": (420.0, 120.0)}
    for key, (full, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


# -- sections --------------------------------------------------------------------------------


def build(args, device: str, folder: Path, state: dict) -> dict:
    on_cuda = device.startswith("cuda")
    settings = CodecSettings(profile="tiny", device=device)
    saved = save_random_sd21_hed(folder, load_tokenizer(settings), architecture=SMOKE if args.smoke else SD21_HED,
                                 device=device, dtype=torch.float16 if on_cuda else torch.float32, fp16_variant=on_cuda)
    state["saved"] = saved
    return {"parameters_m": {k: round(v / 1e6, 1) for k, v in saved.parameters.items()},
            "disk_gb": round(saved.disk_bytes() / 1e9, 2)}


def load(args, device: str, state: dict) -> dict:
    saved = state["saved"]
    settings = CodecSettings(profile="sd21-hed", base_model=str(saved.base_model), controlnet_model=str(saved.controlnet),
                             device=device, deterministic=False)
    reconstructor = Reconstructor(settings.model_profile(), settings)
    started = time.perf_counter()
    reconstructor.load()
    load_s = time.perf_counter() - started
    state.update(reconstructor=reconstructor, settings=settings)
    pipelines = reconstructor._pipelines
    result = {"load_s": round(load_s, 2), "note": "files just written: the page cache is warm",
              "schedulers": {mode.name: type(p.scheduler).__name__ for mode, p in pipelines.items()},
              "unet_dtype": str(pipelines[Mode.PICS].unet.dtype),
              "cross_attention_dim": int(pipelines[Mode.PICS].unet.config.cross_attention_dim),
              "text_embedding_width": int(reconstructor._negative_embeds.shape[-1])}
    if device.startswith("cuda"):
        result["memory_after_load_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return result


def throughput(args, device: str, budget: Budget, state: dict) -> dict:
    reconstructor, rows, skipped = state["reconstructor"], [], []
    for batch in args.batch_sizes:
        estimate = (args.repeats + 0.2) * batch * state["s_per_image"].get(rows[-1]["batch"], 0.0) if rows else 0.0
        if not budget.allows(estimate):
            skipped.append(batch)
            continue
        jobs = make_jobs(batch, state["size"], args.steps)
        reconstructor.decode_batch([replace(job, steps=2) for job in jobs])  # warm-up of this shape
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        latencies = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            images = reconstructor.decode_batch(jobs)
            latencies.append(time.perf_counter() - started)
        latency = float(np.median(latencies))
        state["s_per_image"][batch] = latency / batch
        row = {"batch": batch, "latency_s": round(latency, 3), "s_per_image": round(latency / batch, 3),
               "images_per_s": round(batch / latency, 3),
               "constant_images": sum(int(np.asarray(image).std() == 0) for image in images)}
        if device.startswith("cuda"):
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            state.setdefault("peak_bytes", {})[batch] = torch.cuda.max_memory_allocated()
        if state["per_image"]:
            row["achieved_tflops"] = round(state["per_image"] * batch / latency, 1)
            if state["peak"]:
                row["share_of_peak"] = round(row["achieved_tflops"] / state["peak"], 3)
        rows.append(row)
    return {"mode": "PICS", "rows": rows, "skipped_batches": skipped}


def batch_vs_alone(reconstructor: Reconstructor, state: dict, key: str = "alone") -> dict:
    jobs = make_jobs(4, state["size"], state["steps"])
    batched = [pixels(image) for image in reconstructor.decode_batch(jobs)]
    alone = [pixels(reconstructor.decode_batch([job])[0]) for job in jobs]
    state[key] = alone
    return {"batch": len(jobs), "deterministic": reconstructor.deterministic, **compare(batched, alone)}


def oom_split(device: str, state: dict) -> dict:
    reconstructor, alone = state["reconstructor"], state["alone"]
    jobs = make_jobs(4, state["size"], state["steps"])
    result = {}
    with counting_calls(reconstructor) as (calls, splits), simulated_oom_above_one(reconstructor):
        images = [pixels(image) for image in reconstructor.decode_batch(jobs)]
    result["simulated"] = {"pipeline_calls": calls, "splits": len(splits), **compare(images, alone)}
    peaks = state.get("peak_bytes", {})
    if not device.startswith("cuda") or 1 not in peaks or 2 not in peaks:
        result["real"] = {"status": "skipped", "reason": "needs CUDA and the batch-1 and batch-2 peaks"}
        return result
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    cap = peaks[1] + (peaks[2] - peaks[1]) / 2  # batch 2 cannot fit, batch 1 can
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        with counting_calls(reconstructor) as (calls, splits):
            images = [pixels(image) for image in reconstructor.decode_batch(jobs)]
        result["real"] = {"cap_gib": round(cap / 2**30, 2), "pipeline_calls": calls, "splits": len(splits),
                          **compare(images, alone)}
    except Exception as error:  # e.g. DecodeOutOfMemoryError when one image alone does not fit under the cap
        result["real"] = {"cap_gib": round(cap / 2**30, 2), "error": f"{type(error).__name__}: {error}"[:500]}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    return result


def candidates(args, state: dict) -> dict:
    reconstructor = state["reconstructor"]
    width, height = state["size"]
    profile = replace(reconstructor.profile, steps=args.steps, working_short_side=min(width, height))
    sketch = encode_sketch(edge_map(width, height, 7), profile.sketch_kind, quality=2)
    payload = Payload(int(profile.id), width, height, Mode.PICS, encode_token_ids(list(PROMPT_IDS)), sketch)
    jobs = candidate_jobs(payload, profile, [1, 2, 3, 4])
    started = time.perf_counter()
    images = [pixels(image) for image in reconstructor.decode_batch(jobs)]
    batch_s = time.perf_counter() - started
    first_alone = pixels(reconstructor.decode_batch([payload_to_job(payload, profile, candidate=1)])[0])
    distinct = len({image.tobytes() for image in images})
    return {"n": len(jobs), "payload_bytes": len(payload.to_bytes()), "batch_s": round(batch_s, 3),
            "distinct_images": distinct, "candidate_1_vs_alone": compare([images[0]], [first_alone])}


def deterministic(args, device: str, state: dict) -> dict:
    """A second Reconstructor on the same modules with deterministic=True (last: it sets cuDNN flags)."""
    from diffusers import PNDMScheduler

    pipeline = state["reconstructor"]._pipelines[Mode.PICS]
    settings = state["settings"].model_copy(update={"deterministic": True})
    fixed = Reconstructor(state["reconstructor"].profile, settings)
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:  # the same modules, assembled again with deterministic=True (which sets the cuDNN flags)
        fixed.load_components({"unet": pipeline.unet, "vae": pipeline.vae, "text_encoder": pipeline.text_encoder,
                               "tokenizer": pipeline.tokenizer, "controlnet": pipeline.controlnet,
                               "scheduler": PNDMScheduler.from_pretrained(state["saved"].base_model / "scheduler")})
        with counting_calls(fixed) as (calls, _):
            result = batch_vs_alone(fixed, state, key="alone_deterministic")
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    return {**result, "deterministic_batch_size": fixed.deterministic_batch_size, "pipeline_calls": calls}


def checks(sections: dict) -> dict:
    """Pass/fail readings of the sections (None: the section did not run). Differences under free
    batching are a measurement, not a check."""
    def get(name: str, *keys):
        value = sections.get(name, {})
        if value.get("status") != "ok":
            return None
        for key in keys:
            value = value.get(key, {})
        return value

    load, rows = get("load"), get("throughput", "rows")
    oom, det, cand = get("oom_split"), get("batch_vs_alone_deterministic"), get("candidates")
    real_oom = (oom or {}).get("real", {})
    return {
        "profile_samplers": None if load is None else load["schedulers"] == {
            "PIC": "DPMSolverMultistepScheduler", "PICS": "UniPCMultistepScheduler"},
        "text_embedding_width_is_cross_attention_dim": None if load is None else
        load["text_embedding_width"] == load["cross_attention_dim"],
        "no_constant_images": None if rows is None else all(row["constant_images"] == 0 for row in rows),
        "oom_split_simulated_equals_alone": None if oom is None else oom["simulated"]["max_abs_diff"] == 0,
        "oom_split_real_equals_alone": None if "max_abs_diff" not in real_oom else real_oom["max_abs_diff"] == 0,
        "deterministic_batch_equals_alone": None if det is None else det["max_abs_diff"] == 0,
        "candidates_distinct": None if cand is None else cand["distinct_images"] == cand["n"],
    }


# -- helpers ---------------------------------------------------------------------------------


def edge_map(width: int, height: int, seed: int) -> np.ndarray:
    """A line map (uint8, 255 on lines) at the working size: a few full-length lines."""
    rng = np.random.default_rng(seed)
    edges = np.zeros((height, width), np.uint8)
    for _ in range(12):
        if rng.random() < 0.5:
            edges[int(rng.integers(0, height)), :] = 255
        else:
            edges[:, int(rng.integers(0, width))] = 255
    return edges


def make_jobs(n: int, size: tuple[int, int], steps: int) -> list[DecodeJob]:
    """n PICS jobs at the working size (= output size), each with its own seed and sketch: one bucket."""
    width, height = size
    return [DecodeJob(PROMPT_IDS, control_image(edge_map(width, height, i), "hed"), 1000 + i, width, height,
                      width, height, Mode.PICS, steps, 9.0) for i in range(n)]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def compare(batched: list[np.ndarray], alone: list[np.ndarray]) -> dict:
    diffs = [np.abs(a - b) for a, b in zip(batched, alone, strict=True)]
    return {"max_abs_diff": int(max(d.max() for d in diffs)),
            "differing_values_pct": round(100 * float(np.mean([np.mean(d > 0) for d in diffs])), 4),
            "bit_identical_jobs": sum(int(d.max() == 0) for d in diffs)}


@contextmanager
def counting_calls(reconstructor: Reconstructor):
    """Record the batch size of every pipeline call, and every out-of-memory split (the decoder's metric hook)."""
    calls: list[int] = []
    splits: list[int] = []
    real = reconstructor._generate
    reconstructor._generate = lambda jobs: calls.append(len(jobs)) or real(jobs)
    reconstructor.on_oom_split = lambda: splits.append(1)
    try:
        yield calls, splits
    finally:
        del reconstructor._generate
        reconstructor.on_oom_split = None


@contextmanager
def simulated_oom_above_one(reconstructor: Reconstructor):
    """The PICS pipeline raises torch.OutOfMemoryError for more than one image, like a full GPU."""
    real = reconstructor._pipelines[Mode.PICS]

    def pipeline(**arguments):
        if len(arguments["generator"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by gpu_check)")
        return real(**arguments)

    reconstructor._pipelines[Mode.PICS] = pipeline
    try:
        yield
    finally:
        reconstructor._pipelines[Mode.PICS] = real


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return platform.processor() or "cpu"


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_FP16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"table: {key}"
    return None, "unknown device: pass --peak-tflops"


def versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


if __name__ == "__main__":
    main()
