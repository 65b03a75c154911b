"""Validation loss of a DiT at fixed timesteps: one number per timestep, comparable across stages and runs.

Training draws a random timestep, random noise (plus a random DC offset) and drops captions at random, so
its loss curve mixes all of them. Here everything but the weights is fixed: the held-out latents are the
posterior MEAN times the scale factor (no posterior sample), the noise of batch b is drawn from
`seed + b` and is the same at every timestep (common random numbers: the curve's shape is the model's, not
the draw's), no noise offset, no caption dropout, and the timesteps are the centres of `num_timesteps`
equal bins of the training schedule. The loss is the plain MSE of the training target (epsilon or v) over
all latents, without the min-SNR weight, which at a fixed timestep is only a constant factor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch


def fixed_timesteps(num_timesteps: int, num_train_timesteps: int) -> list[int]:
    """Centres of `num_timesteps` equal bins of [0, num_train_timesteps): 10 of 1000 -> 50, 150, ..., 950."""
    if not 1 <= num_timesteps <= num_train_timesteps:
        raise ValueError(f"num_timesteps must be in [1, {num_train_timesteps}], got {num_timesteps}")
    edges = np.linspace(0, num_train_timesteps, num_timesteps + 1)
    return [int(v) for v in np.floor((edges[:-1] + edges[1:]) / 2)]


@torch.inference_mode()
def validation_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], scale_factor: float,
                    scheduler, prediction_type: str, timesteps: list[int], seed: int,
                    max_batches: int | None = None, forward_batch: int = 16) -> dict[str, Any]:
    """Mean loss per timestep over `batches` (dicts with `latent_mean` (B, C, t, h, w), `text` (B, L, C),
    `text_mask` (B, L)); `scheduler` is the training schedule (`components.dit.diffusion.make_scheduler`).
    Each sample is noised to every timestep; the model sees at most `forward_batch` of those at once.

    Returns {"timesteps", "loss" (per timestep), "mean" (over timesteps), "samples", "batches"}."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    sums = np.zeros(len(timesteps))
    samples = batches_seen = 0
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        clean = batch["latent_mean"].float() * scale_factor  # (B, C, t, h, w)
        generator = torch.Generator().manual_seed(seed + index)
        noise = torch.randn(clean.shape, generator=generator)  # (B, C, t, h, w), on the CPU: device-independent
        size, count = clean.shape[0], len(timesteps)
        # Every (sample, timestep) pair, sample-major: row r is sample r // count at timesteps[r % count].
        rows = torch.arange(size).repeat_interleave(count)  # (B·K,)
        steps = torch.tensor(timesteps, dtype=torch.long).repeat(size)  # (B·K,)
        errors = torch.empty(size * count)
        for start in range(0, size * count, forward_batch):
            row, t = rows[start:start + forward_batch], steps[start:start + forward_batch]
            noisy = scheduler.add_noise(clean[row], noise[row], t)
            target = noise[row] if prediction_type == "epsilon" else scheduler.get_velocity(clean[row], noise[row], t)
            prediction = model(noisy.to(device, dtype), t.to(device), batch["text"][row].to(device, dtype),
                               batch["text_mask"][row].to(device)).float().cpu()
            errors[start:start + len(row)] = (prediction - target).square().flatten(1).mean(1)
        sums += errors.view(size, count).sum(0).double().numpy()
        samples += size
        batches_seen += 1
    if samples == 0:
        raise ValueError("no validation batches: the held-out latent set is empty")
    losses = sums / samples
    return {"timesteps": list(timesteps), "loss": [float(v) for v in losses], "mean": float(losses.mean()),
            "samples": samples, "batches": batches_seen}
