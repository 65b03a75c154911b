"""What the data stages need before they start: a valid configuration and, for the LAION aesthetic
scorer, its CLIP model and head weights on disk (they are never downloaded unless allowed)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from components.core.preflight import load_or_problems
from components.data.config import load_data_config


def check(preset: str, overrides: Sequence[str] = (), functions: Collection[str] = ()) -> list[str]:
    config, problems = load_or_problems(load_data_config, preset, overrides)
    if config is None or "run_filter" not in functions or config.filter.aesthetic.scorer != "laion":
        return problems
    laion = config.filter.aesthetic.laion
    key = "data.filter.aesthetic.laion"
    if not Path(str(laion.head_weights)).is_file():
        problems.append(f"{key}.head_weights: no file at {laion.head_weights}: put the predictor head there")
    if not laion.allow_download and not Path(str(laion.clip_model)).is_dir() and not _in_hub_cache(laion.clip_model):
        problems.append(f"{key}.clip_model: {laion.clip_model} is neither a local folder nor in the Hugging Face "
                        f"cache, and downloads are off: give a folder, or set {key}.allow_download=true")
    return problems


def _in_hub_cache(repo_id: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(str(repo_id), "config.json"), str)
    except ValueError:  # not a valid repository id
        return False
