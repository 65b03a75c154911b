"""One DiT training step (reference notes §3.1, §3.6, with the latents and text precomputed).

Several ranks compute what one process computes over the global batch (up to float summation order):
- each rank holds a slice of the global batch (all ranks one bucket, equal shapes); FSDP2 averages the
  gradients over the ranks (the loss is a mean over equally many latents on every rank);
- every random draw (posterior sample, caption dropout, timesteps, noise, noise offset) is made for the
  whole global batch from a generator seeded alike on every rank, and each rank takes its rows
  (`diffusion.Rows`), so a sample's noise does not depend on the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler

from components.core.distributed import Context
from components.core.training.ema import EMA
from components.core.training.guard import apply_update
from components.dit.config import DiffusionConfig
from components.dit.diffusion import Rows, diffusion_loss, draw, drop_captions
from components.dit.model import OpenSoraT2V


@dataclass
class Parts:
    """What `build` makes. `model` is sharded in place under FSDP2: it is what the step calls."""

    model: OpenSoraT2V
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: DDPMScheduler
    diffusion: DiffusionConfig
    noise: torch.Generator  # every draw of a step, the same sequence on every rank
    max_grad_norm: float | None
    ctx: Context


@dataclass
class Conditioning:
    """Per-stage constants from the latent folder."""

    scale_factor: float  # the VAE's, from its artifact (never a constant here)
    empty_text: torch.Tensor  # (L0, C) the empty caption's embedding, for caption dropout
    empty_mask: torch.Tensor  # (L0,)


@dataclass
class StepResult:
    loss: float
    per_sample: torch.Tensor  # (b,) weighted loss of each of this rank's samples
    timesteps: torch.Tensor  # (b,)
    grad_norm: float


def train_step(parts: Parts, batch: dict[str, Any], conditioning: Conditioning, updates: int, autocast) -> StepResult:
    """Sample z from the posterior, drop captions, take the §3.1 loss, update, then the EMA (`updates` = steps
    before this one, for the EMA warm-up)."""
    ctx, device = parts.ctx, parts.ctx.device
    mean = batch["latent_mean"].to(device, non_blocking=True)  # (b, C, t, h, w), unscaled posterior
    logvar = batch["latent_logvar"].to(device, non_blocking=True)
    rows = Rows(ctx.dp_rank * mean.shape[0], mean.shape[0] * ctx.dp_size)
    # A fresh posterior sample every step, as the reference's per-step encode (§3.1): z = (mu + sigma·eps)·s.
    eps = draw("randn", tuple(mean.shape), parts.noise, rows).to(device)
    latents = (mean + torch.exp(0.5 * logvar) * eps) * conditioning.scale_factor
    text, text_mask = drop_captions(batch["text"].to(device), batch["text_mask"].to(device),
                                    conditioning.empty_text.to(device), conditioning.empty_mask.to(device),
                                    parts.diffusion.text_dropout, parts.noise, rows)
    latent_mask = batch.get("latent_mask")
    parts.model.train()
    with autocast():
        loss = diffusion_loss(parts.model, latents, text, text_mask, parts.scheduler, parts.diffusion, parts.noise,
                              None if latent_mask is None else latent_mask.to(device), rows)
    grad_norm = apply_update(loss.loss, parts.optimizer, parts.model, ctx, parts.max_grad_norm)
    parts.ema.update(parts.model, updates)
    return StepResult(float(loss.loss.detach()), loss.per_sample.cpu(), loss.timesteps.cpu(), grad_norm)
