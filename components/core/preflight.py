"""Checks that need no work, run before any stage starts: configuration, and the files a stage needs offline.

Each component with a configuration has `components/<name>/preflight.py` with
`check(preset, overrides, functions) -> list[str]`: its preset and `--set` overrides, then the local
files (weights, model folders) that the named entry functions will need. Every problem is one line
naming the configuration key or the file, and what to do; an empty list means "go".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.core.config import ConfigError


def load_or_problems(load: Callable[[str, Sequence[str]], Any], preset: str,
                     overrides: Sequence[str]) -> tuple[Any, list[str]]:
    """(config, []) or (None, [the configuration error])."""
    try:
        return load(preset, overrides), []
    except ConfigError as exc:
        return None, [str(exc)]


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps (and first looks for) the file it would download from `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
