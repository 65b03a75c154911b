"""Typed configuration of the data stage; presets in `presets/<name>.yaml`, one group per sub-stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from components.core.config import StrictModel, load_config

PRESETS_DIR = Path(__file__).parent / "presets"


class SynthConfig(StrictModel):
    """Synthetic captioned videos (`t2v data synth`)."""

    bad_fraction: float = 0.2  # share of deliberately bad clips (static, blurred, noisy, flicker, short)


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
