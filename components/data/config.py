"""Typed configuration of the data stage; presets in `presets/<name>.yaml`, one group per sub-stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from components.core.config import StrictModel, load_config

PRESETS_DIR = Path(__file__).parent / "presets"


class SynthConfig(StrictModel):
    """Synthetic captioned videos (`t2v data synth`): sizes, rates and lengths are drawn per clip."""

    bad_fraction: float = Field(0.2, ge=0.0, le=1.0)  # share of deliberately bad clips (see synth.DEFECTS)
    min_side: int = Field(64, ge=16)  # longest side is drawn from multiples of 8 in [min_side, max_side]
    max_side: int = Field(160, ge=16)
    aspect_ratios: list[float] = [1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16]  # width / height
    fps_choices: list[int] = [12, 24, 30]
    min_frames: int = Field(9, ge=2)
    max_frames: int = Field(60, ge=2)
    short_frames: int = Field(4, ge=1)  # length of "too short" defect clips (below filter.min_frames)
    slow_speed: float = Field(0.25, gt=0)  # frame widths (or heights) per second
    fast_speed: float = Field(0.6, gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        if self.short_frames >= self.min_frames:
            raise ValueError(f"short_frames {self.short_frames} must be below min_frames {self.min_frames}")
        return self


class LaionConfig(StrictModel):
    """Weights of the LAION aesthetic predictor; never fetched unless `allow_download`."""

    clip_model: str | None = None  # local folder or hub id of a CLIP ViT-L/14 (openai/clip-vit-large-patch14)
    head_weights: str | None = None  # the predictor head (.pth state dict or .safetensors)
    allow_download: bool = False
    device: str = "cpu"


class AestheticConfig(StrictModel):
    scorer: Literal["opencv", "laion"] = "opencv"
    # Reference thresholds for `laion`: 4.75 (Open-Sora Plan v1.3), 4.5 (Open-Sora). The `opencv` score
    # has its own scale: calibrated on the synthetic set (see presets/tiny.yaml).
    min_score: float = 2.0
    sample_frames: int = Field(3, ge=3)  # evenly through the clip, always first, middle and last
    laion: LaionConfig = LaionConfig()


class MotionConfig(StrictModel):
    """Motion = mean optical-flow magnitude in frame diagonals per second (scale- and rate-free)."""

    min: float = Field(0.005, ge=0)  # below: static
    max: float = Field(1.0, gt=0)  # above: shaky or too fast
    stride_seconds: float = Field(0.25, gt=0)  # time between the frames of a flow pair
    work_size: int = Field(64, ge=16)  # long side of the grey copies for flow, flicker and cut detection
    max_flicker: float = Field(0.1, gt=0)  # median relative brightness jump between consecutive frames
    max_cut: float = Field(0.3, gt=0, le=1)  # largest histogram (Bhattacharyya) jump between consecutive frames


class FilterConfig(StrictModel):
    """Aesthetic, motion and technical filtering (`t2v data filter`)."""

    workers: int = Field(0, ge=0)  # worker processes; 0 = one per CPU core
    min_frames: int = Field(9, ge=1)  # the smallest frame bucket of the preset (4k+1 frames)
    min_side: int = Field(32, ge=1)  # pixels; below: too small
    max_aspect_ratio: float = Field(3.0, ge=1)  # long side / short side; above: extreme
    aesthetic: AestheticConfig = AestheticConfig()
    motion: MotionConfig = MotionConfig()

    @model_validator(mode="after")
    def _laion_weights(self) -> FilterConfig:
        if self.aesthetic.scorer == "laion" and not (self.aesthetic.laion.clip_model and self.aesthetic.laion.head_weights):
            raise ValueError("aesthetic.scorer 'laion' needs aesthetic.laion.clip_model and aesthetic.laion.head_weights")
        if self.motion.min >= self.motion.max:
            raise ValueError(f"motion.min {self.motion.min} must be below motion.max {self.motion.max}")
        return self


class ShardConfig(StrictModel):
    """Bucketing and WebDataset sharding (`t2v data shard`)."""


class LoaderConfig(StrictModel):
    """Streaming bucketed loader used by training."""


class DataConfig(StrictModel):
    synth: SynthConfig = SynthConfig()
    filter: FilterConfig = FilterConfig()
    shard: ShardConfig = ShardConfig()
    loader: LoaderConfig = LoaderConfig()


def load_data_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> DataConfig:
    return load_config(DataConfig, PRESETS_DIR, preset, overrides)
