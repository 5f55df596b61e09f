"""bench/gpu_check.py keeps working without a GPU: its --smoke run exercises every section on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.gpu_check import Budget, peak_tflops
from tests.paths import REPO

SECTIONS = ["build", "load", "throughput", "batch_vs_alone_free", "oom_split", "candidates",
            "batch_vs_alone_deterministic"]


def test_smoke_run_exercises_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out),
               "--peak-tflops", "1", "--tflop-per-image", "0.001",  # so the share-of-peak arithmetic runs too
               "--max-seconds", "400"]  # the smoke default (120 s) skips sections on a busy 2-core machine
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "cpu"
    assert {"versions", "settings", "peak_fp16_dense_tflops", "tflop_per_image", "checks", "elapsed_s"} <= set(report)
    assert list(report["sections"]) == SECTIONS
    assert report["skipped_sections"] == []
    assert all(section["status"] == "ok" for section in report["sections"].values()), report["sections"]
    sections = report["sections"]
    assert set(sections["build"]["parameters_m"]) == {"unet", "vae", "text_encoder", "controlnet"}
    assert sections["load"]["schedulers"] == {"PIC": "DPMSolverMultistepScheduler", "PICS": "UniPCMultistepScheduler"}
    rows = sections["throughput"]["rows"]
    assert [row["batch"] for row in rows] == [1, 2, 4, 8]
    assert all({"images_per_s", "s_per_image", "achieved_tflops", "share_of_peak"} <= set(row) for row in rows)
    assert sections["batch_vs_alone_free"]["deterministic"] is False
    assert sections["batch_vs_alone_free"]["max_abs_diff"] <= 1  # the CPU float32 tolerance (docs/reconstruction.md)
    assert sections["oom_split"]["simulated"]["pipeline_calls"] == [4, 2, 1, 1, 2, 1, 1]
    assert sections["oom_split"]["real"]["status"] == "skipped"  # needs CUDA
    assert sections["candidates"]["n"] == 4
    # Every check that can run on the CPU passes; the real out-of-memory split needs CUDA.
    assert {name: value for name, value in report["checks"].items() if value is not True} == {
        "oom_split_real_equals_alone": None}


def test_peak_table_and_budget():
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.4, "table: H100")
    assert peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert peak_tflops("NVIDIA H200", None)[0] == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert peak_tflops("NVIDIA L40S", None)[0] == 362.0
    assert peak_tflops("Some GPU", None)[0] is None
    assert peak_tflops("NVIDIA H200", 500.0) == (500.0, "--peak-tflops")
    assert Budget(60).allows(10) and not Budget(0).allows(1)
