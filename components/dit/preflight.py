"""What the DiT's stages need before they start: a valid configuration and, for any stage (training and
sampling both embed captions), a text encoder that loads offline: `tiny`, a local model folder, one of
ours on S3, or a hub id already in the Hugging Face cache (nothing downloads unless text.allow_download)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from components.core import storage
from components.core.preflight import load_or_problems
from components.dit.config import load_dit_config


def check(preset: str, overrides: Sequence[str] = (), functions: Collection[str] = ()) -> list[str]:
    config, problems = load_or_problems(load_dit_config, preset, overrides)
    if config is None or not functions:
        return problems
    problem = _text_encoder_problem(config.text.source, config.text.allow_download)
    return problems + ([f"dit preset '{preset}': {problem}"] if problem else [])


def _text_encoder_problem(source: str, allow_download: bool) -> str | None:
    if source == "tiny":
        return None
    if storage.is_s3(source):
        found = storage.exists(storage.join(source, "config.json"))
        return None if found else f"text.source {source}: no config.json there (a folder saved by TextEncoder.save)"
    path = Path(source).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"text.source {source}: a folder without config.json"
    if source.startswith(("/", ".", "~")) or path.exists():
        return f"text.source {source}: no such folder; point it at a local T5/mT5 model folder"
    if allow_download or _in_hub_cache(source):  # a hub id such as google/mt5-xxl
        return None
    return (f"text.source {source}: not a local folder and not in the Hugging Face cache, and downloads are off: "
            f"point text.source at a local copy, or set text.allow_download=true")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False
