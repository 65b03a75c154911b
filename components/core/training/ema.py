"""Exponential moving average of a model's trainable parameters, with its own state dict.

The shadow weights are kept apart from the live model: resuming restores both separately, and only the
explicit phase-1 -> phase-2 handoff turns EMA weights into live weights (reference pitfall §9.11).
"""

from __future__ import annotations

import torch
from torch import nn

from components.core.distributed import unwrap


class EMA:
    """Shadow weights of a model's trainable parameters (of the unwrapped module: names without `module.`;
    under FSDP2 the shadows are sharded like the parameters they follow)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1); got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}

    def decay_at(self, updates: int) -> float:
        """The decay of the update after `updates` earlier ones. With warm-up, diffusers' EMAModel rule that
        the DiT reference trains with (reference notes §3.3): min(decay, (1 + s) / (10 + s)), s = `updates`,
        and 0 for the first update (the shadow becomes a copy), so early weights are not averaged with the
        random init for thousands of steps. The step count comes from the trainer, whose checkpoint holds it."""
        if not self.warmup:
            return self.decay
        return 0.0 if updates == 0 else min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int = 0) -> None:
        """shadow <- d · shadow + (1 - d) · param, d = `decay_at(updates)` (reference notes §1.10, §3.3);
        `model` may be DDP-wrapped."""
        decay = self.decay_at(updates)
        for name, param in unwrap(model).named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict of `model` with EMA parameters in place of the live ones (buffers as live)."""
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        state.update({name: shadow.clone() for name, shadow in self.shadow.items()})
        return state

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The shadow tensors themselves (not copies): a sharded checkpoint load fills them in place.
        The decay is configuration, not state."""
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing, unexpected = set(self.shadow) - set(shadow), set(shadow) - set(self.shadow)
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        for name, tensor in shadow.items():
            if tensor is not self.shadow[name]:
                self.shadow[name].copy_(tensor)
