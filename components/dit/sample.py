"""Text to video (reference notes §4): captions → text encoder → denoising loop → VAE decode → uint8 frames.

    frames = sample("runs/demo/dit-stage5", ["a red circle moving left on a blue background"],
                    frames=17, height=64, width=64, steps=50, guidance=4.5, seed=0)   # (1, 17, 64, 64, 3)

    sampler = Sampler.load("models:/t2v-dit@stage5")      # load once, generate many times (the eval does)
    frames = sampler.generate(prompts, frames=17, height=64, width=64, seed=0)

Prompts are cleaned as training cleaned captions (the text encoder's settings). Prompt i of a call is
seeded with `seed + i`, drawn on the CPU: a prompt's video does not depend on the device's random
generator, and its noise not on the batch it is in. Unlike the reference's sampling scripts (a `while
True:` loop, a missing import), this returns when the clips are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from components.core import runtime
from components.dit.captions import EMPTY_CAPTION, wrap_prompt
from components.dit.denoise import SCHEDULERS, SchedulerName, denoise, make_sampling_scheduler
from components.dit.sample_sources import SamplingSources, folder_sha256, resolve_sources

# The reference's recommended settings (notes §4): Euler-ancestral, 100 steps, guidance 7.5.
DEFAULT_SCHEDULER: SchedulerName = "euler_ancestral"
DEFAULT_STEPS = 100
DEFAULT_GUIDANCE = 7.5


@dataclass
class Sampler:
    """The loaded models of one DiT and where they came from."""

    sources: SamplingSources
    dit: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: Any  # components.dit.text.TextEncoder
    device: torch.device

    @classmethod
    def load(cls, dit: str, *, vae: str | None = None, text_encoder: str | None = None, weights: str = "ema",
             device: str = "auto") -> Sampler:
        """Load the DiT (`sample_sources` lists what `dit` may be) with its VAE and text encoder."""
        return cls.from_sources(resolve_sources(dit, vae, text_encoder, weights), device)

    @classmethod
    def from_sources(cls, sources: SamplingSources, device: str = "auto") -> Sampler:
        from components.dit import load_dit
        from components.dit.text import TextEncoderConfig, load_text_encoder
        from components.vae import load_vae

        target = runtime.select_device(device)
        dtype = runtime.autocast_dtype(target) or torch.float32  # bf16 on accelerators as the reference (§4)
        text_config = TextEncoderConfig(source=sources.text_encoder,
                                        **({"max_length": sources.text_max_length} if sources.text_max_length else {}))
        text_encoder = load_text_encoder(text_config, target)
        if text_encoder.d_model != sources.dit_config.caption_channels:
            raise ValueError(f"text encoder {sources.text_encoder} is {text_encoder.d_model} wide, the DiT "
                             f"{sources.dit} takes captions {sources.dit_config.caption_channels} wide")
        model = load_dit(sources.model_folder, sources.weights, dtype).to(target)
        decoder = load_vae(sources.vae).to(target, dtype)
        return cls(sources, model, decoder, text_encoder, target)

    def provenance(self) -> dict[str, Any]:
        """The models' URIs and checksums, for a record of what made the samples."""
        sources = self.sources
        return {"dit": {"uri": sources.dit, "folder": sources.dit_folder, "model_folder": sources.model_folder,
                        "sha256": folder_sha256(sources.model_folder),
                        "registered_model": sources.registered_model},
                "vae": {"uri": sources.vae, "sha256": folder_sha256(sources.vae)},
                "text_encoder": {"uri": sources.text_encoder, "sha256": folder_sha256(sources.text_encoder),
                                 "max_length": self.text_encoder.max_length},
                "scale_factor": sources.scale_factor, "diffusion": sources.diffusion.model_dump(mode="json"),
                "latents": (sources.conditioning or {}).get("latents")}

    def prepared_prompts(self, prompts: Sequence[str], quality_tags: bool = False) -> list[str]:
        """The prompts as the text encoder sees them (wrapped in the reference's quality tags if asked, cleaned)."""
        return self.text_encoder.prepare([wrap_prompt(p) if quality_tags else p for p in prompts])

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], *, frames: int, height: int, width: int, steps: int = DEFAULT_STEPS,
                 guidance: float = DEFAULT_GUIDANCE, scheduler: SchedulerName = DEFAULT_SCHEDULER, seed: int = 0,
                 negative_prompt: str = EMPTY_CAPTION, batch: int = 1, quality_tags: bool = False) -> np.ndarray:
        """Videos (N, T, H, W, 3) uint8 for N prompts, `batch` prompts per denoising loop.

        The negative prompt is the unconditional side of classifier-free guidance (guidance > 1): by
        default the empty caption, which training substituted for dropped captions."""
        latent_shape = self.sources.latent_shape(frames, height, width)
        check_options(prompts, steps, batch, scheduler)
        captions = [wrap_prompt(p) if quality_tags else p for p in prompts]
        negative_text, negative_mask = self.text_encoder.encode([negative_prompt], pad_to_max=False)
        videos = []
        for start in range(0, len(captions), batch):
            chunk = captions[start:start + batch]
            text, text_mask = self.text_encoder.encode(chunk, pad_to_max=False)  # (b, L, C), (b, L)
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            latents = denoise(self.dit, text.to(self.dit_dtype), text_mask, latent_shape,
                              make_sampling_scheduler(scheduler, self.sources.diffusion), steps, generators, guidance,
                              negative_text.to(self.dit_dtype).expand(len(chunk), -1, -1),
                              negative_mask.expand(len(chunk), -1))
            videos += [self.decode(one[None], frames, height, width) for one in latents]
        return np.stack(videos)

    @property
    def dit_dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    def decode(self, latents: torch.Tensor, frames: int, height: int, width: int) -> np.ndarray:
        """One clip's model latents (1, C, t, h, w) → (T, H, W, 3) uint8 (the VAE tiles large clips itself)."""
        dtype = next(self.vae.parameters()).dtype
        video = self.vae.decode((latents / self.sources.scale_factor).to(self.device, dtype))  # (1, 3, T, H, W)
        video = video[0, :, :frames, :height, :width].float().clamp(-1, 1)
        return ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def sample(dit: str, prompts: Sequence[str], *, frames: int, height: int, width: int, steps: int = DEFAULT_STEPS,
           guidance: float = DEFAULT_GUIDANCE, scheduler: SchedulerName = DEFAULT_SCHEDULER, seed: int = 0,
           negative_prompt: str = EMPTY_CAPTION, batch: int = 1, quality_tags: bool = False, vae: str | None = None,
           text_encoder: str | None = None, weights: str = "ema", device: str = "auto") -> np.ndarray:
    """Videos (N, T, H, W, 3) uint8 for `prompts`; the size is checked before any model is loaded."""
    sources = resolve_sources(dit, vae, text_encoder, weights)
    sources.latent_shape(frames, height, width)
    check_options(prompts, steps, batch, scheduler)
    return Sampler.from_sources(sources, device).generate(
        prompts, frames=frames, height=height, width=width, steps=steps, guidance=guidance, scheduler=scheduler,
        seed=seed, negative_prompt=negative_prompt, batch=batch, quality_tags=quality_tags)


def check_options(prompts: Sequence[str], steps: int, batch: int, scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{scheduler}': use one of {', '.join(SCHEDULERS)}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("give at least one prompt, as a list")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")

