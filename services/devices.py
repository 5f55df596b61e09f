"""Which torch device a model runs on: one rule for every stage.

``auto`` means the first CUDA device when one is visible, else the CPU; any other
value (``cpu``, ``cuda``, ``cuda:1``) is used as given. torch is imported only
when the rule is applied, so importing this module costs nothing.
"""

from __future__ import annotations


def resolve_device(setting: str = "auto") -> str:
    """The device name for a ``device`` setting (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
    setting = (setting or "auto").strip().lower()
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")
