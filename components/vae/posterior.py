"""Diagonal Gaussian posterior q(z | x) returned by `CausalVAE.encode` (reference notes §1.3)."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """Mean and log-variance split from the encoder's moments along channels.

    `moments` is (B, 2*C, t, h, w): the first C channels are the mean, the rest the log-variance,
    clamped to [-30, 20] like the reference so `exp` never overflows.
    """

    def __init__(self, moments: torch.Tensor):
        self.moments = moments  # (B, 2C, t, h, w)
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, C, t, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Noise is drawn on the posterior's own device (the reference draws it on CPU: §9.16).
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise  # (B, C, t, h, w)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over every non-batch dimension: shape (B,)."""
        kl = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)  # (B, C, t, h, w)
        return kl.flatten(1).sum(dim=1)
