"""`torchrun --nproc-per-node 2 -m tests.core.training.fsdp_job OUT STRATEGY`: a two-block MLP trained
3 steps with `distributed.wrap(..., STRATEGY)` on each rank's slice of a global batch of 4; rank 0
checks the weights against one process over the whole batch; a NaN loss on rank 1 alone makes every rank
skip the step; then a checkpoint is saved (sharded)."""

import sys

import torch
from torch import nn

from components.core import distributed
from components.core.training import checkpoint
from components.core.training.ema import EMA
from components.core.training.guard import BadStep, apply_update

GLOBAL_BATCH, STEPS = 4, 3


def build() -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(6, 16), nn.GELU()), nn.Sequential(nn.Linear(16, 6))]
    return nn.Sequential(*blocks), blocks


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(GLOBAL_BATCH, 6, generator=generator) for _ in range(STEPS)]


def train(model: nn.Module, ctx: distributed.Context, ema: EMA, rows: slice) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD: the comparison is of gradients, exactly
    for x in batches():
        optimizer.zero_grad()
        model(x[rows]).pow(2).mean().backward()
        optimizer.step()
        ema.update(model)
    return optimizer


def main() -> None:
    out, strategy = sys.argv[1], sys.argv[2]
    ctx = distributed.setup("cpu", timeout_s=60)
    model, blocks = build()
    wrapped = distributed.wrap(model, ctx, strategy, blocks=blocks)
    ema = EMA(model, 0.5)
    per_rank = GLOBAL_BATCH // ctx.dp_size
    optimizer = train(wrapped, ctx, ema, slice(ctx.dp_rank * per_rank, (ctx.dp_rank + 1) * per_rank))
    weights = checkpoint.full_weights(model, ema)  # a collective
    if ctx.is_main:
        alone, _ = build()
        alone_ema = EMA(alone, 0.5)
        train(alone, distributed.Context(0, 1, 0, torch.device("cpu")), alone_ema, slice(None))
        for name, value in alone_ema.model_state_dict(alone).items():
            assert torch.allclose(weights[name], value, atol=1e-6), name
    # A non-finite loss on one rank only: every rank skips the step (none may wait in a collective alone).
    loss = wrapped(torch.ones(1, 6)).sum() * (float("nan") if ctx.rank == 1 else 1.0)
    try:
        apply_update(loss, optimizer, wrapped, ctx)
        raise AssertionError(f"rank {ctx.rank} took a step that rank 1 skipped")
    except BadStep:
        pass
    tensors = {"model": checkpoint.ModelState(wrapped), "optimizer": checkpoint.OptimizerState(wrapped, optimizer),
               "ema": ema}
    checkpoint.save(out, STEPS, ctx, tensors, {"step": STEPS}, {"rank": ctx.rank}, keep=1)
    distributed.teardown()


if __name__ == "__main__":
    main()
