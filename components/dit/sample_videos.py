"""`t2v dit sample`: one H.264 mp4 per prompt (`000-<slug>.mp4`) and `samples.json` in an output folder
(local or s3://), the record of what made them: prompts, seeds, scheduler, steps, guidance, sizes, and the
DiT, VAE and text encoder with their URIs and sha256s."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.core import manifest, media, storage
from components.dit.captions import EMPTY_CAPTION
from components.dit.sample import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, Sampler, check_options
from components.dit.sample_sources import resolve_sources

SAMPLES_FILE = "samples.json"
_SLUG_CHARACTERS = 40


def slug(prompt: str) -> str:
    """A file-name-safe short form of a (cleaned) prompt: its first lower-case words joined by dashes."""
    words = re.sub(r"[^a-z0-9]+", " ", prompt.lower()).split() or ["prompt"]
    kept = words[:1]
    for word in words[1:]:
        if len("-".join([*kept, word])) > _SLUG_CHARACTERS:
            break
        kept.append(word)
    return "-".join(kept)[:_SLUG_CHARACTERS]


def write_samples(dit: str, prompts: Sequence[str], out: str, *, frames: int, height: int, width: int,
                  steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, scheduler: str = DEFAULT_SCHEDULER,
                  seed: int = 0, negative_prompt: str = EMPTY_CAPTION, batch: int = 1, quality_tags: bool = False,
                  fps: float = 24.0, vae: str | None = None, text_encoder: str | None = None, weights: str = "ema",
                  device: str = "auto") -> dict[str, Any]:
    """Sample `prompts` and write the mp4s and samples.json (last) to `out`; returns samples.json's content.
    Sizes and options are checked before any model is loaded."""
    sources = resolve_sources(dit, vae, text_encoder, weights)
    sources.latent_shape(frames, height, width)
    check_options(prompts, steps, batch, scheduler)
    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    started = time.perf_counter()
    sampler = Sampler.from_sources(sources, device)
    loaded = time.perf_counter()
    videos = sampler.generate(prompts, frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                              scheduler=scheduler, seed=seed, negative_prompt=negative_prompt, batch=batch,
                              quality_tags=quality_tags)  # (N, T, H, W, 3) uint8
    generated = time.perf_counter()
    encoded = sampler.prepared_prompts(prompts, quality_tags)
    names = [f"{index:03d}-{slug(cleaned)}.mp4" for index, cleaned in enumerate(sampler.prepared_prompts(prompts))]
    records = []
    with storage.staging_dir("t2v-samples-") as staging:
        for index, (prompt, name, video) in enumerate(zip(prompts, names, videos, strict=True)):
            media.write_mp4(video, Path(staging) / name, fps)
            records.append({"index": index, "prompt": prompt, "encoded_prompt": encoded[index], "seed": seed + index,
                            "file": name, "sha256": storage.put_file(Path(staging) / name, storage.join(out, name)),
                            # the decoded frames themselves, whatever the encoder does with them
                            "frames_sha256": storage.sha256_bytes(video.tobytes())})
    samples = {
        "samples": records,
        "scheduler": scheduler, "steps": steps, "guidance": guidance, "seed": seed,
        "negative_prompt": negative_prompt if guidance > 1 else None, "quality_tags": quality_tags,
        "frames": frames, "height": height, "width": width, "fps": fps, "batch": batch,
        "device": str(sampler.device), "dtype": str(sampler.dit_dtype).removeprefix("torch."),
        "models": sampler.provenance(), "code_version": manifest.code_version(),
        "seconds": {"load": round(loaded - started, 3), "generate": round(generated - loaded, 3),
                    "per_clip": round((generated - loaded) / len(prompts), 3)},
    }
    storage.write_json(storage.join(out, SAMPLES_FILE), samples)  # last: a folder with it is complete
    return samples
