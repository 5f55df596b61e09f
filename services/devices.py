"""Which torch device a model runs on: one rule for every stage.

``auto`` means the first CUDA device when one is visible, else the CPU; any other
value (``cpu``, ``cuda``, ``cuda:1``) is used as given. torch is imported only
when the rule is applied, so importing this module costs nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def resolve_device(setting: str = "auto") -> str:
    """The device name for a ``device`` setting (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
    setting = (setting or "auto").strip().lower()
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup v2 CPU quota (a container's
    ``--cpus``), rounded up; at least 1."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity mask is the bound
    return max(1, count)


def cpu_budget(environ: Mapping[str, str] = os.environ) -> int:
    """Cores this process should keep busy: ``OMP_NUM_THREADS`` when set (Ray sets it to a replica's
    ``num_cpus``; a user may set it to share a host), else ``available_cpus()``."""
    try:
        return max(1, int(environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cpus()


def native_bf16_cpu() -> bool:
    """True when this CPU computes bfloat16 natively (AMX tiles or AVX-512 BF16), so bfloat16 matrix products
    run faster than float32 ones rather than slower."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private helpers of torch.cpu
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
