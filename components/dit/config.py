"""Typed configuration of the diffusion transformer; presets in `presets/<name>.yaml`.

`DiTModelConfig` is the architecture of OpenSoraT2V v1.2 ("ROPE-L/122", reference notes §2.1). A DiT
model folder stores it in the reference's own `config.json` field names (`official.py`), so our folders
load in diffusers-based tools and official folders load here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import StrictModel, load_config
from components.core.distributed import LaunchConfig
from components.dit.encode_config import EncodeConfig
from components.dit.text import TextEncoderConfig
from components.dit.train_config import TrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"


class DiTModelConfig(StrictModel):
    """Architecture of `OpenSoraT2V` (reference notes §2.1-2.9)."""

    in_channels: int = Field(4, gt=0)  # VAE latent channels
    out_channels: int = Field(4, gt=0)  # = in_channels: epsilon only, no learned sigma (§2.7)
    num_layers: int = Field(32, gt=0)
    num_attention_heads: int = Field(24, gt=0)
    attention_head_dim: int = Field(96, gt=0)  # split in three equal RoPE chunks (t, h, w): a multiple of 6
    caption_channels: int = Field(4096, gt=0)  # text encoder width (mT5-XXL d_model)
    # The reference embeds patches per frame (a 2D conv, §2.2): only a temporal patch of 1 works there.
    patch_size_t: Literal[1] = 1
    patch_size: int = Field(2, gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Position interpolation of RoPE (§2.6): positions are divided by these. 480p (1, 1, 1); 720p (1, 1.5, 2).
    interpolation_scale_t: float = Field(1.0, gt=0)
    interpolation_scale_h: float = Field(1.0, gt=0)
    interpolation_scale_w: float = Field(1.0, gt=0)
    # The latent size the model was configured for (latent frames; latent rows, columns). Informative only:
    # RoPE is computed on the fly, so the model runs at any size (§8.2).
    sample_size_t: int = Field(8, gt=0)
    sample_size: tuple[int, int] = (60, 80)
    # "fp32": RoPE angles, cos and sin in fp32 whatever the model's dtype (§9.2). "model_dtype": the
    # reference's behaviour, angles rounded to the model's dtype first (cos error ~0.1 at position 80 in
    # bf16); only for bit-faithful reuse of released weights in bf16. Both agree exactly in fp32.
    rope_angles: Literal["fp32", "model_dtype"] = "fp32"
    # Zero the output head, the adaLN modulation and the per-block gates at init (DiT/PixArt practice for
    # training from scratch). Off by default: the reference has no custom init (§2.9).
    zero_init: bool = False
    # Recompute each block in the backward pass instead of keeping its activations (training only).
    gradient_checkpointing: bool = False
    # Finer recomputation for long videos, each at the price of one more forward of what it covers:
    # - sublayer_checkpointing: a block's backward holds one sublayer's activations at a time (its self-
    #   attention, cross-attention and MLP are recomputed one by one), not the whole block's;
    # - mlp_checkpoint_tokens: the MLP runs in chunks of this many tokens, each recomputed in the backward
    #   pass, so its 4x-wide hidden layer never exists for all tokens at once. None: the MLP runs whole.
    sublayer_checkpointing: bool = False
    mlp_checkpoint_tokens: int | None = Field(None, gt=0)

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_channels(self) -> int:
        """Output features per token: one patch of every latent channel."""
        return self.patch_size_t * self.patch_size * self.patch_size * self.out_channels

    @property
    def interpolation_scales(self) -> tuple[float, float, float]:
        return (self.interpolation_scale_t, self.interpolation_scale_h, self.interpolation_scale_w)

    def token_grid(self, latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, int, int]:
        """(T', H', W') tokens for a latent of that size; raises ValueError when the patch does not fit."""
        sizes = {"frames": (latent_frames, self.patch_size_t), "height": (latent_height, self.patch_size),
                 "width": (latent_width, self.patch_size)}
        for name, (size, patch) in sizes.items():
            if size <= 0 or size % patch:
                raise ValueError(f"latent {name} {size} is not a positive multiple of the DiT patch size {patch}")
        return latent_frames // self.patch_size_t, latent_height // self.patch_size, latent_width // self.patch_size

    @field_validator("attention_head_dim")
    @classmethod
    def _rope_splits_heads(cls, value: int) -> int:
        if value % 6:
            raise ValueError(f"{value} is not a multiple of 6: 3D RoPE splits each head in three equal chunks, "
                             "each rotated in halves")
        return value

    @model_validator(mode="after")
    def _check_architecture(self) -> DiTModelConfig:
        if self.out_channels != self.in_channels:
            raise ValueError("out_channels must equal in_channels (epsilon prediction, no learned sigma)")
        if any(size <= 0 for size in self.sample_size):
            raise ValueError(f"sample_size {self.sample_size} must be positive")
        return self


class LatentConfig(StrictModel):
    """The VAE latent space the DiT works in: pixel sizes map to latent sizes through these factors.
    Stages that read a VAE artifact take them from its config; this group serves presets and `info`."""

    temporal_compression: int = Field(4, gt=0)  # T = 1 + 4k pixel frames -> 1 + k latent frames
    spatial_compression: int = Field(8, gt=0)

    def latent_shape(self, frames: int, height: int, width: int, patch_size: int) -> tuple[int, int, int]:
        """(t, h, w) latents of a (frames, height, width) clip; ValueError names the size that does not fit."""
        if frames < 1 or (frames - 1) % self.temporal_compression:
            raise ValueError(f"frames {frames} must be 1 + k * {self.temporal_compression} (k >= 0)")
        pixels_per_token = self.spatial_compression * patch_size
        for name, size in (("height", height), ("width", width)):
            if size <= 0 or size % pixels_per_token:
                raise ValueError(f"{name} {size} must be a positive multiple of {pixels_per_token} "
                                 f"(VAE compression {self.spatial_compression} x DiT patch {patch_size})")
        return ((frames - 1) // self.temporal_compression + 1, height // self.spatial_compression,
                width // self.spatial_compression)


class DiffusionConfig(StrictModel):
    """The training objective (reference notes §3.1): DDPM noise, epsilon target, min-SNR weighting."""

    num_train_timesteps: int = Field(1000, gt=1)
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    snr_gamma: float | None = Field(5.0, gt=0)  # min-SNR-gamma loss weights; None: plain MSE
    noise_offset: float = Field(0.02, ge=0)  # a per-sample, per-channel DC offset added to the noise
    text_dropout: float = Field(0.1, ge=0, le=1)  # chance a caption is replaced by the empty one (for CFG)


class DiTConfig(StrictModel):
    """Root configuration of the DiT component: the network, latents, text encoder, objective, the latent
    precompute (`encode`), the five-stage curriculum (`train`) and how many processes (`launch`)."""

    model: DiTModelConfig = DiTModelConfig()
    latent: LatentConfig = LatentConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    encode: EncodeConfig = EncodeConfig()
    train: TrainConfig = TrainConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _text_width_matches(self) -> DiTConfig:
        if self.text.source == "tiny" and self.text.tiny.d_model != self.model.caption_channels:
            raise ValueError(f"model.caption_channels ({self.model.caption_channels}) must equal the tiny text "
                             f"encoder's width text.tiny.d_model ({self.text.tiny.d_model})")
        return self


def load_dit_config(preset: str | Path = "tiny", overrides: Sequence[str] = ()) -> DiTConfig:
    return load_config(DiTConfig, PRESETS_DIR, preset, overrides)
