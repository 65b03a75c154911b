"""Typed configuration of the causal video VAE; presets in `presets/<name>.yaml`.

The root `VAEConfig` holds one group per concern (`model` today; training, data and evaluation groups
join it later). `VAEModelConfig` is also what a VAE model folder stores in its `config.json`, so later
stages read the latent scale and compression factors from the artifact, never from a constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from components.core.config import StrictModel, load_config
from components.core.distributed import LaunchConfig
from components.vae.train_config import DataConfig, EvalConfig, TrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"

# Module kinds keep the reference's names (reference notes §1.1) so official configs map 1:1.
ResnetKind = Literal["ResnetBlock2D", "ResnetBlock3D"]
DownsampleKind = Literal["", "Downsample", "Spatial2xTime2x3DDownsample"]
UpsampleKind = Literal["", "SpatialUpsample2x", "Spatial2xTime2x3DUpsample"]


class TilingConfig(StrictModel):
    """Tiled encode/decode for clips larger than one tile (see `tiling.py`).

    Neighbouring tiles overlap and are cross-faded linearly in time as well as in space, so there
    are no seams (the reference drops a boundary frame instead: reference notes §1.7, §9.3).
    """

    enabled: bool = False
    tile_size: int = Field(256, ge=1, le=16384)  # pixels per spatial tile side (multiple of the spatial compression)
    tile_frames: int = Field(33, ge=1, le=4097)  # pixel frames per temporal tile (1 + k * temporal compression)
    overlap: int = Field(4, ge=0)  # spatial overlap between tiles, in latent pixels
    overlap_frames: int = Field(2, ge=1)  # temporal overlap between tiles, in latent frames (>= 2 cross-fades)


class VAEModelConfig(StrictModel):
    """Architecture of `CausalVAE` (reference notes §1.1-1.4).

    Sizes are bounded (a model folder's config.json is input like any other: `hidden_size: -8` must fail
    naming the field, and no size may ask for an absurd allocation)."""

    in_channels: int = Field(3, ge=1, le=16)
    hidden_size: int = Field(128, ge=1, le=4096)  # channels of level 0; level i has hidden_size * hidden_size_mult[i]
    hidden_size_mult: list[Annotated[int, Field(ge=1, le=64)]] = Field([1, 2, 4, 4], min_length=1, max_length=8)
    z_channels: int = Field(4, ge=1, le=1024)  # encoder emits 2 * z_channels (mean and logvar)
    embed_dim: int = Field(4, ge=1, le=1024)  # latent channels after quant_conv
    # Per encoder level; the decoder has num_res_blocks + 1 per level. 0 (a lean encoder of plain
    # resamplers, constant width) lets a toy VAE learn in CPU minutes (bench/RESULTS.md, session 8).
    num_res_blocks: int = Field(2, ge=0, le=64)
    norm_groups: int = Field(32, ge=1)  # GroupNorm groups (reference: 32); must divide every channel count
    norm_eps: float = Field(1e-6, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    encoder_conv_in: Literal["Conv2d", "CausalConv3d"] = "Conv2d"
    encoder_resnet_blocks: list[ResnetKind] = ["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"]
    encoder_downsample: list[DownsampleKind] = ["Downsample", "Spatial2xTime2x3DDownsample",
                                                "Spatial2xTime2x3DDownsample", ""]
    decoder_resnet_blocks: list[ResnetKind] = ["ResnetBlock3D"] * 4
    decoder_upsample: list[UpsampleKind] = ["", "SpatialUpsample2x", "Spatial2xTime2x3DUpsample",
                                            "Spatial2xTime2x3DUpsample"]
    # Interpolation of Spatial2xTime2x3DUpsample: the reference uses trilinear; "nearest" makes the
    # tail-initialised decoder equal the 2D SD decoder on images (whose upsampler is nearest).
    upsample_interpolation: Literal["trilinear", "nearest"] = "trilinear"
    mid_block: bool = True  # two res-blocks (and mid_attention) at the coarsest level of encoder and decoder
    mid_attention: bool = True  # AttnBlock3DFix between the two mid res-blocks (per-frame attention)
    use_quant_layer: bool = True  # quant_conv / post_quant_conv (1x1x1 causal convs)
    scale_factor: float = Field(0.18215, gt=0)  # latent scale applied by downstream stages, never inside the VAE
    temporal_compression: int = Field(4, ge=1)  # checked against the block kinds
    spatial_compression: int = Field(8, ge=1)  # checked against the block kinds
    tiling: TilingConfig = TilingConfig()

    @property
    def num_levels(self) -> int:
        return len(self.hidden_size_mult)

    @property
    def latent_channels(self) -> int:
        return self.embed_dim if self.use_quant_layer else self.z_channels

    @property
    def compression(self) -> dict[str, int]:
        return {"t": self.temporal_compression, "h": self.spatial_compression, "w": self.spatial_compression}

    @model_validator(mode="after")
    def _check_architecture(self) -> VAEModelConfig:
        levels = self.num_levels
        for name in ("encoder_resnet_blocks", "encoder_downsample", "decoder_resnet_blocks", "decoder_upsample"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs one entry per level ({levels}, from hidden_size_mult)")
        if not self.use_quant_layer and self.embed_dim != self.z_channels:
            raise ValueError("embed_dim must equal z_channels when use_quant_layer is false")
        channels = {self.hidden_size * m for m in self.hidden_size_mult}
        if self.num_res_blocks == 0 and len(channels) > 1:
            raise ValueError("num_res_blocks 0 needs one width at every level (hidden_size_mult all equal): "
                             "the encoder's res-blocks are what change the channel count")
        if any(c % self.norm_groups for c in channels):
            raise ValueError(f"norm_groups={self.norm_groups} does not divide the channel counts {sorted(channels)}")
        spatial_down = sum(kind != "" for kind in self.encoder_downsample)
        temporal_down = sum(kind == "Spatial2xTime2x3DDownsample" for kind in self.encoder_downsample)
        spatial_up = sum(kind != "" for kind in self.decoder_upsample)
        temporal_up = sum(kind == "Spatial2xTime2x3DUpsample" for kind in self.decoder_upsample)
        if (spatial_down, temporal_down) != (spatial_up, temporal_up):
            raise ValueError("decoder_upsample must undo encoder_downsample (same number of spatial and temporal steps)")
        if self.spatial_compression != 2**spatial_down or self.temporal_compression != 2**temporal_down:
            raise ValueError(f"compression must match the block kinds: spatial_compression={2**spatial_down}, "
                             f"temporal_compression={2**temporal_down}")
        tiling = self.tiling
        if tiling.tile_size % self.spatial_compression:
            raise ValueError("tiling.tile_size must be a multiple of spatial_compression")
        # Interior tiles need room for both ramps, so the weights still sum to one (tiling.py).
        if not 0 <= 2 * tiling.overlap <= tiling.tile_size // self.spatial_compression:
            raise ValueError("tiling.overlap must be >= 0 and at most half a tile in latent pixels")
        if (tiling.tile_frames - 1) % self.temporal_compression:
            raise ValueError("tiling.tile_frames must be 1 + k * temporal_compression")
        latent_tile_frames = (tiling.tile_frames - 1) // self.temporal_compression + 1
        if not 1 <= tiling.overlap_frames or 2 * tiling.overlap_frames > latent_tile_frames:
            raise ValueError("tiling.overlap_frames must be >= 1 and at most half a tile in latent frames")
        return self


class TailInitConfig(StrictModel):
    """Tail initialisation from a 2D SD VAE (reference notes §1.8; `tail_init.py`)."""

    source: str | None = None  # diffusers AutoencoderKL folder or hub id, or an LDM state-dict file
    subfolder: str | None = None  # e.g. "vae" inside a full Stable Diffusion repository
    allow_download: bool = False  # hub ids are resolved from the local cache only unless this is true


class VAEConfig(StrictModel):
    """Root configuration of the VAE component; other groups (train, data, eval) sit beside `model`."""

    model: VAEModelConfig = VAEModelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    init: TailInitConfig = TailInitConfig()
    launch: LaunchConfig = LaunchConfig()

    def for_phase(self, phase: int) -> VAEConfig:
        """This configuration as phase `phase` trains: its phase's bucket, batch size and lr in place."""
        setting = self.train.phase1 if phase == 1 else self.train.phase2
        data = {"bucket": setting.bucket, "batch_size": setting.batch_size, "crops_per_clip": setting.crops_per_clip}
        data = {key: value for key, value in data.items() if value is not None}
        train = {"lr": setting.lr} if setting.lr is not None else {}
        return self.model_copy(update={"data": DataConfig.model_validate({**self.data.model_dump(), **data}),
                                       "train": self.train.model_copy(update=train)})

    @model_validator(mode="after")
    def _phases_train_on_valid_data(self) -> VAEConfig:
        for phase in (1, 2):
            try:
                self.for_phase(phase)
            except ValidationError as error:
                raise ValueError(f"train.phase{phase} with data: {error.errors()[0]['msg']}") from None
        return self


def load_vae_config(preset: str | Path = "tiny", overrides: Sequence[str] = ()) -> VAEConfig:
    return load_config(VAEConfig, PRESETS_DIR, preset, overrides)
