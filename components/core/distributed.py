"""Several processes training one model: the process group, the device mesh, wrapping, and rank-0 duties.

Launched by torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`/`PORT` in the environment) or as
one plain process, which needs no process group at all: every helper here is then the identity, so a
trainer has one code path for 1 and N processes.

- Backend: gloo on CPU, nccl on CUDA, hccl on Ascend. Every collective has a timeout (`timeout_s`): a
  peer that died or hangs fails the job instead of blocking it for ever (torchrun also stops the other
  ranks as soon as one exits with an error, which is usually faster).
- Mesh: a 2-D DeviceMesh ("dp", "sp"). Data parallel spans `world_size / sp` ranks; the sequence-parallel
  dimension (Ulysses attention in the DiT, reference notes §2) is 1 until a model uses it.
- `wrap(model, "ddp" | "fsdp")`: DDP replicates; FSDP2 (`fully_shard`) shards parameters, gradients and
  optimizer state over "dp", per block first (`blocks`), then the root, with bf16 parameters and fp32
  gradient reduction on accelerators (fp32 everywhere on CPU, where bf16 is slower and inexact).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn

from components.core import runtime
from components.core.config import StrictModel

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
_BACKENDS = {"cuda": "nccl", "npu": "hccl"}


class LaunchConfig(StrictModel):
    """How many processes a training stage runs (`t2v` flows start `torchrun` when more than one): the
    `launch` group of every component that trains."""

    nproc_per_node: int = Field(1, ge=1)
    # A collective that waits longer than this fails the job (a dead or hung peer), instead of hanging.
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)


@dataclass(frozen=True)
class Context:
    """This process's place in the job, its device, and the mesh (None when it runs alone)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh with dims ("dp", "sp")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dp_size(self) -> int:
        return self.mesh["dp"].size() if self.mesh is not None else 1

    @property
    def dp_rank(self) -> int:
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0


def setup(device: str = "auto", sp_size: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the torchrun job (or stand alone): pick this rank's device, init the process group and mesh."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = runtime.select_device(device, local_rank)
    if world_size == 1:
        return Context(0, 1, 0, chosen)
    die_with_parent()  # an orphaned rank would train on (and write checkpoints) after its job was killed
    if world_size % sp_size:
        raise ValueError(f"sequence-parallel size {sp_size} does not divide the world size {world_size}")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend=_BACKENDS.get(chosen.type, "gloo"),
                                timeout=dt.timedelta(seconds=timeout_s))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(chosen.type, (world_size // sp_size, sp_size), mesh_dim_names=("dp", "sp"))
    return Context(rank, world_size, local_rank, chosen, mesh)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (torchrun's agent, or a flow that started it).

    Ranks talk to each other, not to the agent, once the process group exists: without this, killing a
    job's launcher leaves its ranks training. Elsewhere than Linux nothing happens.
    """
    if sys.platform != "linux":
        return
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def log_to_rank_file(ctx: Context, folder: str | Path) -> Path:
    """Send this process's log records to `folder/rank-<r>.log` too, each line tagged with the rank."""
    path = Path(folder) / f"rank-{ctx.rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{ctx.rank} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    log.info("rank %d of %d (local rank %d, pid %d) on %s", ctx.rank, ctx.world_size, ctx.local_rank, os.getpid(),
             ctx.device)
    return path


# --------------------------------------------------------------------------- wrapping


def wrap(model: nn.Module, ctx: Context, strategy: Literal["ddp", "fsdp"] = "ddp",
         blocks: Iterable[nn.Module] = ()) -> nn.Module:
    """The model as the training step calls it: itself when alone, else DDP or FSDP2 over the "dp" mesh."""
    if not ctx.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type != "cpu" else None
        # Buffers are not broadcast from rank 0 on every forward: batch norms are synchronised instead
        # (`sync_batch_norm`), so the buffers are equal on every rank by construction.
        return DistributedDataParallel(model, device_ids=device_ids, process_group=ctx.mesh["dp"].get_group(),
                                       forward_sync_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if ctx.device.type != "cpu" else MixedPrecisionPolicy())
        for block in blocks:  # per block first: each block's parameters are gathered only while it runs
            fully_shard(block, mesh=ctx.mesh["dp"], mp_policy=policy)
        fully_shard(model, mesh=ctx.mesh["dp"], mp_policy=policy)
        return model
    raise ValueError(f"unknown parallel strategy '{strategy}': use ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    """The module DDP wraps (FSDP2 shards in place, so its model is already the module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose statistics cover the global batch (all ranks), with gradients through them.

    torch's SyncBatchNorm runs only on accelerators; this one uses the differentiable all-reduce, so
    CPU (gloo) runs compute what one process over the global batch would. Same parameters and buffers
    as the layer it replaces, so checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *spatial)
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        moments = torch.cat([x.sum(dims), (x * x).sum(dims), count.view(1)])  # (2C + 1,)
        moments = _SumOverRanks.apply(moments)
        channels = x.shape[1]
        total = moments[-1]
        mean = moments[:channels] / total
        var = moments[channels:2 * channels] / total - mean * mean  # biased, as batch norm normalises
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1).clamp_min(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        normed = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return normed * self.weight.view(shape) + self.bias.view(shape) if self.affine else normed


def sync_batch_norm(module: nn.Module, ctx: Context) -> nn.Module:
    """Batch norms of `module` normalise over the global batch when the job has several ranks."""
    if not ctx.distributed:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            assert child.track_running_stats and child.momentum is not None, name
            child.__class__ = _GlobalBatchNorm  # same state, forward over the global batch
        else:
            sync_batch_norm(child, ctx)
    return module


# --------------------------------------------------------------------------- collectives


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """The mean of each logged value over the data-parallel ranks (equal batches: the global-batch value)."""
    if not ctx.distributed or not values:
        return values
    names = sorted(values)
    tensor = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, group=ctx.mesh["dp"].get_group())
    return {name: float(v) / ctx.dp_size for name, v in zip(names, tensor.tolist(), strict=True)}


def mean_tensor(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """A tensor averaged over the data-parallel ranks (differentiable not needed: used on detached values)."""
    if not ctx.distributed:
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, group=ctx.mesh["dp"].get_group())
    return reduced / ctx.dp_size


def all_true(flag: bool, ctx: Context) -> bool:
    """True when `flag` holds on every rank: decisions that change control flow must agree everywhere."""
    if not ctx.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's `obj` on every rank (e.g. which checkpoint to resume from)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    return box[0]


def gather_objects(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


