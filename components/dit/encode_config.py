"""Configuration of the latent precompute stage (`t2v dit encode`), the `encode:` group of a DiT preset."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from components.core.config import StrictModel

_BUCKET_NAME = re.compile(r"[1-9][0-9]*x[1-9][0-9]*x[1-9][0-9]*")


class EncodeConfig(StrictModel):
    """Which latent buckets to produce from the shards, and how latents and text embeddings are stored.

    Each source clip is converted to every target bucket it can fill: a video bucket FxHxW takes the
    clip's first F frames (at the shards' train fps), an image bucket 1xHxW its middle frame; then a
    centre crop to the bucket's aspect and a resize to HxW. The image buckets serve the image stages of
    the curriculum (reference notes §3.5) from the same clips.
    """

    # "cached": encode every clip once and store the posteriors (mean, log-variance) and a deduplicated
    # text store. "online": store only the layout (which source sample goes to which bucket); the latent
    # loader then runs the VAE and the text encoder on every batch (for data too large to cache).
    mode: Literal["cached", "online"] = "cached"
    targets: list[str] = Field(min_length=1, default=["1x64x64", "9x64x64", "17x64x64"])  # pixel "FxHxW" names
    max_aspect_error: float = Field(1.25, ge=1.0)  # a clip's h/w may differ from a bucket's by this factor at most
    max_upscale: float = Field(1.0, ge=1.0)  # largest resize factor allowed when the crop is smaller than the bucket
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # clips held out for val/, chosen by a hash of their key
    batch_size: int = Field(8, ge=1)  # clips per VAE call (all of one bucket)
    text_batch_size: int = Field(64, ge=1)  # captions per text encoder call
    # Storage of the posterior, 2 bytes a value either way: fp16 keeps 11 significant bits (relative rounding
    # <= 2^-12) for |values| up to 65504, which VAE latents and the clamped log-variance [-30, 20] stay far
    # below (an overflow fails naming the clips); bf16 only 8 (2^-9): 8x the error, which at v1.2's latent
    # scale is as large as a trained VAE's own posterior std. The error of each run is in the manifest.
    latent_dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    text_dtype: Literal["fp32", "fp16", "bf16"] = "bf16"  # mT5-XXL itself runs in bf16 (notes §3.6): lossless there
    shard_max_samples: int = Field(1024, ge=1)  # a latent shard never mixes source shards, so it may hold fewer
    text_shard_max_bytes: int = Field(256 * 2**20, ge=1)  # text store shard files close past this size
    tiling: bool | None = None  # tiled VAE encode: None as the VAE folder's config says, else forced on/off
    read_workers: int = Field(1, ge=0)  # processes decoding source clips beside the VAE (0: in the main process)

    @field_validator("targets")
    @classmethod
    def _bucket_names(cls, targets: list[str]) -> list[str]:
        bad = [name for name in targets if not _BUCKET_NAME.fullmatch(name)]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be distinct bucket names 'FxHxW' (pixels), got {targets}")
        return targets
