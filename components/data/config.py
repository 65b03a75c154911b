"""Typed configuration of the data stage; presets in `presets/<name>.yaml`, one group per sub-stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


class FilterConfig(StrictModel):
    """Aesthetic, motion and technical filtering (`t2v data filter`)."""


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
