"""Where and how computation runs: device choice, autocast, seeding (processes: `distributed.py`)."""

from __future__ import annotations

import contextlib
import random

import torch


def npu_available() -> bool:
    """True when the Ascend `torch_npu` extension imports and sees a device."""
    try:
        import torch_npu  # noqa: F401  (optional: the `npu` extra)
    except ImportError:
        return False
    return bool(getattr(torch, "npu", None)) and torch.npu.is_available()


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then npu (when torch_npu imports), then cpu; or name one explicitly."""
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif npu_available():
            preference = "npu"
        else:
            preference = "cpu"
    if preference in ("cuda", "npu"):
        return torch.device(preference, local_rank)
    if preference == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device '{preference}': use auto, cuda, npu or cpu")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed-precision dtype for `torch.autocast`, or None for full fp32.

    `auto` is bf16 on cuda and npu (what the reference trains in) and fp32 on cpu, where bf16 autocast is
    slower than fp32 on most processors and would make CPU test runs differ from fp32 references.
    """
    if precision == "fp32":
        return None
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision '{precision}': use auto, fp32, bf16 or fp16")
    return None if device.type == "cpu" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`, or nothing when `dtype` is None (full fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch with `seed + rank`, so data-parallel ranks draw different noise.

    (The reference re-seeds every rank identically after seeding per rank: reference notes §9.5.)
    """
    import numpy as np

    effective = seed + rank
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)
    return effective
