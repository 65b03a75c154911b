"""VAE training losses: L1 + LPIPS reconstruction, KL, and a hinge GAN with the adaptive weight.

Reference notes §1.9 (`LPIPSWithDiscriminator3D`). The learned-logvar branch of the reference is left
out: with `learn_logvar=False` and logvar 0 it is the identity (nll = rec).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from components.core.metrics import build_lpips
from components.vae.train_config import LossConfig


class Posterior(Protocol):
    def kl(self) -> torch.Tensor: ...


def adaptive_gan_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float, average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """‖∇_last nll‖ / (‖∇_last g‖ + 1e-4), clamped to [0, max] and detached (§1.9; VQGAN's balancing).

    `average` averages a gradient over the data-parallel ranks, so the weight is the global batch's.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if average is not None:
        nll_grad, g_grad = average(nll_grad), average(g_grad)
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class VAELoss(torch.nn.Module):
    def __init__(self, config: LossConfig, lpips_seed: int = 0,
                 average: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        self.average = average  # over data-parallel ranks, for the adaptive GAN weight
        self.perceptual = (build_lpips(config.lpips_backbone, config.lpips_random_backbone, spatial=False,
                                       seed=lpips_seed) if config.perceptual_weight > 0 else None)

    def reconstruction(self, recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel L1 (or L2) plus per-frame LPIPS broadcast onto it, summed over C·H·W, averaged over frames."""
        recon_frames = recon.transpose(1, 2).flatten(0, 1)  # (B·T, C, H, W)
        target_frames = target.transpose(1, 2).flatten(0, 1)  # (B·T, C, H, W)
        difference = recon_frames - target_frames
        pixel = difference.abs() if self.config.reconstruction == "l1" else difference.pow(2)  # (B·T, C, H, W)
        terms = {"rec": pixel.mean()}
        if self.perceptual is not None:
            perceptual = self.perceptual(recon_frames.float(), target_frames.float())  # (B·T, 1, 1, 1)
            pixel = pixel + self.config.perceptual_weight * perceptual
            terms["lpips"] = perceptual.mean()
        terms["nll"] = pixel.sum() / pixel.shape[0]
        return terms

    def generator(self, recon: torch.Tensor, target: torch.Tensor, posterior: Posterior,
                  discriminator: torch.nn.Module, last_layer: torch.Tensor, use_gan: bool) -> dict[str, torch.Tensor]:
        """Total generator loss `gen` = nll + kl_weight·KL + d_weight·disc_factor·g, with its terms."""
        terms = self.reconstruction(recon, target)
        terms["kl"] = posterior.kl().sum() / recon.shape[0]
        total = terms["nll"] + self.config.kl_weight * terms["kl"]
        if use_gan:
            g_loss = -discriminator(recon).mean()
            d_weight = self.config.disc_weight * adaptive_gan_weight(
                terms["nll"], g_loss, last_layer, self.config.adaptive_weight_max, self.average)
            total = total + d_weight * self.config.disc_factor * g_loss
            terms["g"], terms["d_weight"] = g_loss, d_weight
        terms["gen"] = total
        return terms

    def discriminator(self, discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_real = discriminator(real.detach())  # (B, 1, t, h, w)
        logits_fake = discriminator(fake.detach())  # (B, 1, t, h, w)
        return {"disc": self.config.disc_factor * hinge_discriminator_loss(logits_real, logits_fake),
                "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
