"""The non-finite guard: a NaN/inf loss or gradient skips the step; a streak rolls back and skips the data.

A step whose loss or gradient norm is not finite changes nothing (no update, no EMA). After
`max_bad_steps` such steps in a row the trainer reloads its latest checkpoint and from then on skips
the batches that caused them (by their global index in the loader's order, so the skip list is the same
on every rank and survives a resume); after `max_rollbacks` rollbacks it gives up with an error.
Decisions are taken by all ranks together: one rank skipping a step that another takes would leave
them waiting on different collectives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from components.core.distributed import Context, all_true


class BadStep(Exception):
    """A non-finite loss or gradient on some rank; the step was not applied."""


def apply_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module, ctx: Context,
                 max_grad_norm: float | None = None) -> float:
    """Backward and optimizer step, unless the loss or the gradient norm is non-finite on any rank. With
    `max_grad_norm` the gradients are first scaled down to that total norm. Returns the norm before clipping."""
    if not all_true(bool(torch.isfinite(loss)), ctx):
        raise BadStep(f"non-finite loss {loss.item()} (on this or another rank)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over the ranks here (FSDP2 reduce-scatters them)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(grad_norm, DTensor):  # FSDP2: the norm of this rank's shards, made whole over the ranks
        grad_norm = grad_norm.full_tensor()
    if not all_true(bool(torch.isfinite(grad_norm)), ctx):
        optimizer.zero_grad(set_to_none=True)
        raise BadStep(f"non-finite gradient norm {grad_norm.item()} (on this or another rank)")
    scale = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (float(grad_norm) + 1e-6))  # torch's rule
    if scale < 1.0:
        torch._foreach_mul_(grads, scale)  # a Python float: sharded (DTensor) gradients take it as they are
    optimizer.step()
    return float(grad_norm)


@dataclass
class Guard:
    max_bad_steps: int
    max_rollbacks: int
    skip_batches: list[int] = field(default_factory=list)  # batches that caused a rolled-back streak
    streak: list[int] = field(default_factory=list)  # batch indices of the current run of bad steps
    rollbacks: int = 0

    def good_step(self) -> None:
        self.streak = []

    def bad_step(self, batch: int, step: int, events_uri: str) -> bool:
        """Record a bad step on `batch`; True when the streak is long enough to roll back now."""
        self.streak.append(batch)
        if len(self.streak) < self.max_bad_steps:
            return False
        if self.rollbacks >= self.max_rollbacks:
            raise RuntimeError(f"{len(self.streak)} bad steps in a row at step {step} after "
                               f"{self.rollbacks} rollbacks; see {events_uri}")
        return True

    def rolled_back(self) -> list[int]:
        """The streak's batches join the skip list; returns them."""
        offending = sorted(set(self.streak))
        self.skip_batches = sorted(set(self.skip_batches) | set(offending))
        self.rollbacks += 1
        self.streak = []
        return offending

    def state_dict(self) -> dict[str, Any]:
        return {"skip_batches": list(self.skip_batches), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A rollback restores an older checkpoint: what was learned since (skips, rollbacks) stays.
        self.skip_batches = sorted(set(self.skip_batches) | set(state["skip_batches"]))
        self.rollbacks = max(self.rollbacks, state["rollbacks"])
