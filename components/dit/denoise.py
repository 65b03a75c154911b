"""The denoising loop of text-to-video sampling (reference notes §4), kept apart from the network.

Schedulers come from diffusers, built on the training schedule (`DiffusionConfig`): Euler-ancestral by
default as the reference recommends, DPM-Solver++ multistep and DDIM (clip_sample off) as options.
Classifier-free guidance runs the negative and positive captions as one batch: eps = eps_u + g (eps_c -
eps_u), skipped when g <= 1. All noise is drawn on the CPU from the caller's generator, so the same seed
gives the same latents on any device; with one generator per sample, a sample's noise does not depend on
what else is in its batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from components.dit.config import DiffusionConfig

SchedulerName = Literal["euler_ancestral", "dpm_solver", "ddim"]
SCHEDULERS = {"euler_ancestral": EulerAncestralDiscreteScheduler, "dpm_solver": DPMSolverMultistepScheduler,
               "ddim": DDIMScheduler}


def make_sampling_scheduler(name: SchedulerName, diffusion: DiffusionConfig):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}': use one of {', '.join(SCHEDULERS)}")
    options = {"clip_sample": False} if name == "ddim" else {}
    return SCHEDULERS[name](num_train_timesteps=diffusion.num_train_timesteps, beta_start=diffusion.beta_start,
                             beta_end=diffusion.beta_end, beta_schedule=diffusion.beta_schedule,
                             prediction_type=diffusion.prediction_type, **options)


def pad_captions(texts: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack captions of different lengths ((L_i, C) each, masks (L_i,)) into (B, L, C) and (B, L),
    padding with masked zeros."""
    length = max(text.shape[0] for text in texts)
    text = torch.zeros(len(texts), length, texts[0].shape[1], dtype=texts[0].dtype, device=texts[0].device)
    mask = torch.zeros(len(texts), length, dtype=masks[0].dtype, device=masks[0].device)
    for row, (one_text, one_mask) in enumerate(zip(texts, masks, strict=True)):
        text[row, :one_text.shape[0]], mask[row, :one_mask.shape[0]] = one_text, one_mask
    return text, mask


@torch.inference_mode()
def denoise(model: torch.nn.Module, text: torch.Tensor, text_mask: torch.Tensor, latent_shape: tuple[int, ...],
            scheduler, steps: int, generator: torch.Generator | list[torch.Generator], guidance: float = 1.0,
            negative_text: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample latents (B, C, T, H, W) for captions text (B, L, C_text) / text_mask (B, L).

    With guidance > 1, negative_text (B, L', C_text) and negative_mask (B, L') are the unconditional side
    (the empty caption or a negative prompt). Returns unscaled model latents (divide by the VAE's scale
    factor before decoding). `generator` is one CPU generator, or one per sample."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device, dtype = text.device, next(model.parameters()).dtype
    batch = text.shape[0]
    guided = guidance > 1.0
    if guided:
        if negative_text is None or negative_mask is None:
            raise ValueError("guidance > 1 needs the negative (or empty) caption's embedding")
        text, text_mask = pad_captions([*negative_text, *text], [*negative_mask, *text_mask])
    scheduler.set_timesteps(steps, device=device)
    if isinstance(generator, list):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for a batch of {batch}")
        noise = torch.cat([torch.randn((1, *latent_shape), generator=one) for one in generator])
    else:
        noise = torch.randn((batch, *latent_shape), generator=generator)
    latents = noise.to(device, torch.float32) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = scheduler.scale_model_input(model_input, timestep)
        prediction = model(model_input.to(dtype), timestep.expand(model_input.shape[0]), text, text_mask).float()
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + guidance * (conditional - unconditional)
        latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
    return latents
