"""The diffusion objective of Open-Sora Plan v1.2 (reference notes §3.1), kept apart from the network.

One training step's loss: draw a timestep per sample uniformly in [0, 1000), noise with a small
per-sample, per-channel DC offset, x_t from diffusers' `DDPMScheduler.add_noise`, the model's prediction
against the epsilon (or v) target, MSE in fp32 weighted by min-SNR-gamma (diffusers' `compute_snr`) and
averaged over the valid latents only. Captions are dropped to the empty caption for classifier-free
guidance before they reach the model. All randomness comes from the caller's generator, so a trainer can
checkpoint and restore it for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from components.dit.config import DiffusionConfig


@dataclass(frozen=True)
class Rows:
    """The rows [start, start + B) of a global batch of `total` samples that a call holds. Every random draw
    is made for the whole global batch and sliced, so a sample's noise, timestep and caption dropout do not
    depend on how the batch is split over data-parallel ranks (each rank's generator stays in step)."""

    start: int
    total: int


def draw(kind: str, shape: tuple[int, ...], generator: torch.Generator, rows: Rows | None) -> torch.Tensor:
    """`torch.rand`/`randn` (`kind`) of `shape`, whose first dimension B is this call's rows of the global batch."""
    total = shape[0] if rows is None else rows.total
    start = 0 if rows is None else rows.start
    values = getattr(torch, kind)((total, *shape[1:]), generator=generator, device=generator.device)
    return values[start:start + shape[0]]


def make_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule=config.beta_schedule,
                         prediction_type=config.prediction_type)


def drop_captions(text: torch.Tensor, text_mask: torch.Tensor, empty_text: torch.Tensor, empty_mask: torch.Tensor,
                  probability: float, generator: torch.Generator,
                  rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each caption with the empty caption's embedding with `probability` (reference notes §3.2:
    the empty string, i.e. `</s>` and padding, not a null vector).

    text (B, L, C), text_mask (B, L); empty_text (L0, C) and empty_mask (L0,) are the encoded "".
    Both sides are padded with masked zeros to a common length."""
    batch, length, _ = text.shape
    drop = draw("rand", (batch,), generator, rows) < probability  # (B,)
    if not bool(drop.any()):
        return text, text_mask
    width = max(length, empty_text.shape[0])
    text, text_mask = _pad_tokens(text, text_mask, width)
    empty_text, empty_mask = _pad_tokens(empty_text[None], empty_mask[None], width)
    drop = drop.to(text.device)
    text = torch.where(drop[:, None, None], empty_text.to(text.dtype), text)
    text_mask = torch.where(drop[:, None], empty_mask.to(text_mask.dtype), text_mask)
    return text, text_mask


def _pad_tokens(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    missing = length - text.shape[1]
    if missing == 0:
        return text, mask
    return (torch.nn.functional.pad(text, (0, 0, 0, missing)), torch.nn.functional.pad(mask, (0, missing)))


@dataclass
class Loss:
    loss: torch.Tensor  # scalar, what backward runs on
    per_sample: torch.Tensor  # (B,) weighted loss of each sample, for logging by timestep
    timesteps: torch.Tensor  # (B,) the timesteps drawn


def diffusion_loss(model: torch.nn.Module, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                   scheduler: DDPMScheduler, config: DiffusionConfig, generator: torch.Generator,
                   latent_mask: torch.Tensor | None = None, rows: Rows | None = None) -> Loss:
    """latents (B, C, T, H, W): clean latents already multiplied by the VAE's scale factor; text (B, L, C_text)
    after caption dropout; latent_mask (B, T, H, W), 1 = valid; `rows`: where this batch sits in the global
    batch (data parallel). Returns the weighted loss (§3.1)."""
    batch, channels = latents.shape[:2]
    device = latents.device

    def randn(*shape: int) -> torch.Tensor:
        return draw("randn", shape, generator, rows).to(device)

    total, start = (batch, 0) if rows is None else (rows.total, rows.start)
    timesteps = torch.randint(0, config.num_train_timesteps, (total,), generator=generator,
                              device=generator.device)[start:start + batch].to(device)  # (B,)
    noise = randn(*latents.shape)
    if config.noise_offset:
        noise = noise + config.noise_offset * randn(batch, channels, 1, 1, 1)  # a DC offset per sample and channel
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = noise if config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    prediction = model(noisy, timesteps, text, text_mask, latent_mask)
    error = (prediction.float() - target.float()).square()  # (B, C, T, H, W), fp32
    weights = torch.ones(batch, device=device)
    if config.snr_gamma is not None:
        # Imported here: diffusers.training_utils pulls in every diffusers model (~2.5 s at each process start).
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)  # alpha_bar / (1 - alpha_bar)
        clipped = torch.clamp(snr, max=config.snr_gamma)
        weights = clipped / snr if config.prediction_type == "epsilon" else clipped / (snr + 1)
    valid = torch.ones_like(error) if latent_mask is None else latent_mask[:, None].to(error.dtype).expand_as(error)
    weighted = error * valid * weights[:, None, None, None, None]
    per_sample = weighted.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)  # (B,)
    loss = weighted.sum() / valid.sum().clamp(min=1)  # Σ(loss · mask · w) / Σ mask, as the reference
    return Loss(loss=loss, per_sample=per_sample.detach(), timesteps=timesteps)
