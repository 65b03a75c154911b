"""One VAE training step: a generator step (reconstruction, KL, GAN) or a discriminator step.

Several ranks compute what one process computes over the global batch (up to float summation order):
- each rank holds a slice of the global batch; DDP averages the gradients (every loss is a batch mean);
- posterior noise is drawn for the whole global batch from a generator seeded alike on every rank, and
  each rank takes its slice, so the noise of a sample does not depend on the number of ranks;
- the adaptive GAN weight's two gradient norms are of gradients averaged over the ranks (`VAELoss`);
- the discriminator's batch norms normalise over the global batch (`distributed.sync_batch_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from components.core.distributed import Context
from components.core.training.ema import EMA
from components.core.training.guard import apply_update
from components.vae.losses import VAELoss
from components.vae.model import CausalVAE

LAST_LAYER = "decoder.conv_out.conv.weight"  # the adaptive GAN weight's reference layer (§1.9)


@dataclass
class Parts:
    """What `build` makes; `autoencoder` and `critic` are the (DDP-wrapped) modules steps call."""

    model: CausalVAE
    discriminator: nn.Module
    autoencoder: nn.Module  # wraps `_Autoencoder(model)`
    critic: nn.Module  # wraps `discriminator`
    ema: EMA
    loss: VAELoss
    gen_optimizer: torch.optim.Optimizer
    disc_optimizer: torch.optim.Optimizer
    noise: torch.Generator  # posterior samples, the same sequence on every rank
    sample_posterior: bool
    ctx: Context

    @property
    def last_layer(self) -> torch.Tensor:
        return dict(self.model.named_parameters())[LAST_LAYER]


@dataclass
class Pending:
    """The last generator step's clip and reconstruction, for the discriminator step that follows."""

    batch_index: int
    real: torch.Tensor  # (b, 3, T, H, W), this rank's slice
    fake: torch.Tensor


class Autoencoder(nn.Module):
    """encode -> sample -> decode as one forward, so DDP sees the whole generator pass."""

    def __init__(self, model: CausalVAE):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, parts: Parts):  # (b, 3, T, H, W)
        posterior = self.model.encode(video)  # over (b, C, t, h, w)
        latents = sample_latents(posterior, parts) if parts.sample_posterior else posterior.mode()
        return self.model.decode(latents), posterior  # (b, 3, T, H, W)


def sample_latents(posterior, parts: Parts) -> torch.Tensor:
    """mean + std · noise, the noise being this rank's slice of one draw for the global batch."""
    ctx, mean = parts.ctx, posterior.mean  # (b, C, t, h, w)
    per_rank = mean.shape[0]
    noise = torch.randn((per_rank * ctx.dp_size, *mean.shape[1:]), generator=parts.noise, device=mean.device,
                        dtype=mean.dtype)[ctx.dp_rank * per_rank : (ctx.dp_rank + 1) * per_rank]
    return mean + posterior.std * noise


def generator_step(parts: Parts, index: int, video: torch.Tensor, use_gan: bool,
                   autocast) -> tuple[dict[str, float], Pending | None, torch.Tensor]:
    """Update the VAE on `video`; returns its loss terms, the pending pair (GAN on) and the reconstruction."""
    parts.autoencoder.train()
    parts.discriminator.requires_grad_(False)  # its gradients are not needed on a generator step
    try:
        with autocast():
            recon, posterior = parts.autoencoder(video, parts)
            # The bare discriminator: its weights are equal on every rank and get no gradient here.
            terms = parts.loss.generator(recon, video, posterior, parts.discriminator, parts.last_layer, use_gan)
        apply_update(terms["gen"], parts.gen_optimizer, parts.model, parts.ctx)
    finally:
        parts.discriminator.requires_grad_(True)
    parts.ema.update(parts.model)
    pending = Pending(index, video.detach(), recon.detach()) if use_gan else None
    return {k: float(v.detach()) for k, v in terms.items()}, pending, recon.detach()


def fresh_pending(parts: Parts, index: int, video: torch.Tensor, autocast) -> Pending:
    """A clip and its reconstruction for a discriminator step that has no pending pair."""
    with torch.no_grad(), autocast():
        recon = parts.model.decode(sample_latents(parts.model.encode(video), parts))  # (b, 3, T, H, W)
    return Pending(index, video, recon)


def discriminator_step(parts: Parts, pending: Pending, autocast) -> dict[str, float]:
    parts.critic.train()
    with autocast():
        terms = parts.loss.discriminator(parts.critic, pending.real, pending.fake)
    apply_update(terms["disc"], parts.disc_optimizer, parts.discriminator, parts.ctx)
    return {k: float(v.detach()) for k, v in terms.items()}
