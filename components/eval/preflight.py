"""What the DiT evaluation needs before it starts: a valid configuration and, when a CLIP score is
configured, the CLIP model on disk (a local folder, or a hub id in the local Hugging Face cache) unless
downloads are allowed."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from components.core.preflight import load_or_problems
from components.eval.config import load_eval_config


def check(preset: str, overrides: Sequence[str] = (), functions: Collection[str] = ()) -> list[str]:
    config, problems = load_or_problems(load_eval_config, preset, overrides)
    if config is None:
        return problems
    clip = config.clip
    if "evaluate_dit" in functions and clip.model and not clip.allow_download and not _clip_on_disk(clip.model):
        problems.append(f"eval preset '{preset}': clip.model '{clip.model}' is neither a local folder nor in the "
                        "local Hugging Face cache: put it there, set clip.allow_download=true, or clip.model=null "
                        "(--set eval.clip.model=null for a pipeline)")
    return problems


def _clip_on_disk(model: str) -> bool:
    if Path(model).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except ValueError:  # not a valid hub id either
        return False
