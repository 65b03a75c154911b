"""The non-finite guard: a NaN/inf loss or gradient skips the step; a streak rolls back and skips the data.

A step whose loss or gradient norm is not finite changes nothing (no update, no EMA). After
`max_bad_steps` such steps in a row the trainer reloads its latest checkpoint and from then on skips
the batches that caused them (by their global index in the loader's order, so the skip list is the same
on every rank and survives a resume); after `max_rollbacks` rollbacks it gives up with an error.
Decisions are taken by all ranks together: one rank skipping a step that another takes would leave
them waiting on different collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from components.core.distributed import Context, all_true
from components.core.training import checkpoint


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


# A trainer's loop, as the two helpers below use it (duck-typed): `loader`, `iterator` (None or an iterator
# over the current epoch), `batches_drawn`, `guard`, `events`, `run`, `step`, `out`, `ctx` and
# `restore(checkpoint_uri)`.


def next_usable_batch(loop: Any, empty: Callable[[], str]) -> tuple[int, dict[str, Any]]:
    """The loader's next batch that is not on the skip list, and its index in the loader's order (the same on
    every rank); an epoch's end starts the next one. `empty()`: the error when an epoch yields no batch."""
    while True:
        if loop.iterator is None:
            loop.iterator = iter(loop.loader)
        batch = next(loop.iterator, None)
        if batch is None:  # end of an epoch: the loader's next iteration is the next epoch
            loop.iterator = iter(loop.loader)
            batch = next(loop.iterator, None)
            if batch is None:
                raise ValueError(empty())
        index = loop.batches_drawn
        loop.batches_drawn += 1
        if index in loop.guard.skip_batches:
            loop.events.add("skip_batch", batch=index)
            continue
        return index, batch


def on_bad_step(loop: Any, batch: int, reason: str) -> None:
    """Record a bad step; after a streak, restore the latest intact checkpoint and skip the streak's batches."""
    loop.events.add("bad_step", step=loop.step, batch=batch, reason=reason)
    loop.run.log_metrics({"guard/bad_steps": loop.events.count("bad_step")}, step=loop.step)
    if not loop.guard.bad_step(batch, loop.step, loop.events.uri):
        return
    latest, _ = checkpoint.latest_intact(loop.out, loop.ctx)
    offending = loop.guard.rolled_back()
    loop.restore(latest[1])
    loop.events.add("rollback", to_step=latest[0], checkpoint=latest[1], skip_batches=offending)
    loop.run.log_metrics({"guard/rollbacks": loop.guard.rollbacks}, step=loop.step)
    loop.run.set_tags({"guard.rollbacks": loop.guard.rollbacks, "guard.skip_batches": loop.guard.skip_batches})
