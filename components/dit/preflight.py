"""What the DiT's stages need before they start: a valid configuration. The text encoder and VAE folders a
training or sampling stage reads offline join here with those stages."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from components.core.preflight import load_or_problems
from components.dit.config import load_dit_config


def check(preset: str, overrides: Sequence[str] = (), functions: Collection[str] = ()) -> list[str]:
    return load_or_problems(load_dit_config, preset, overrides)[1]
