"""Where and how computation runs: device choice, autocast dtype, seeding, torchrun environment."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

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


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """The process's place in a torchrun job (a single process when not launched by torchrun)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> DistEnv:
    """Initialise the default process group when running under torchrun (gloo on cpu, nccl, hccl)."""
    env = dist_env()
    if env.world_size > 1 and not torch.distributed.is_initialized():
        backend = {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")
        torch.distributed.init_process_group(backend=backend)
    return env


def destroy_distributed() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
