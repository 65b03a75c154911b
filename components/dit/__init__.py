"""Diffusion transformer (Open-Sora Plan v1.2's OpenSoraT2V): `load_dit` returns the network in eval mode.

    dit = load_dit("s3://bucket/dit-stage5/model_ema")   # our folder, an official v1.2 folder, or s3://
    noise = dit(latents, timestep, text, text_mask)     # latents (B, 4, T, H, W) -> (B, 4, T, H, W)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from components.core import storage

__all__ = ["load_dit", "read_dit_config", "save_dit"]

Weights = Literal["ema", "model"]
_SUBFOLDERS = {"ema": "model_ema", "model": "model"}  # a training checkpoint holds both


def _model_folder(uri: str, weights: Weights) -> str:
    """`uri` itself when it holds a config.json, else its `model_ema/` or `model/` subfolder."""
    from components.dit.official import CONFIG_FILE

    uri = str(uri).rstrip("/")
    for candidate in (uri, storage.join(uri, _SUBFOLDERS[weights])):
        if storage.exists(storage.join(candidate, CONFIG_FILE)):
            return candidate
    raise FileNotFoundError(f"{uri}: not a DiT folder (no {CONFIG_FILE} in it or in {_SUBFOLDERS[weights]}/)")


def read_dit_config(path_or_uri: str | Path, weights: Weights = "ema"):
    """The architecture (`DiTModelConfig`) of a DiT folder, from its config.json alone."""
    from components.dit.official import CONFIG_FILE, official_to_config

    config_uri = storage.join(_model_folder(str(path_or_uri), weights), CONFIG_FILE)
    return official_to_config(storage.read_json(config_uri), source=config_uri)


def load_dit(path_or_uri: str | Path, weights: Weights = "ema", dtype: torch.dtype = torch.float32):
    """Load a DiT folder (diffusers layout: ours or official v1.2; local path or s3:// URI) on CPU.

    A training checkpoint folder holding `model_ema/` and `model/` loads the one `weights` names."""
    from components.dit import official

    uri = _model_folder(str(path_or_uri), weights)
    if storage.is_s3(uri):
        with storage.staging_dir("t2v-dit-") as staging:
            for file_uri in storage.list_files(uri):
                name = storage.relative_to(file_uri, uri)
                if "/" not in name and name.endswith((".safetensors", ".json")):
                    storage.get_file(file_uri, Path(staging) / name)
            return official.load_folder(Path(staging), dtype)
    return official.load_folder(Path(storage.local_dir(uri)), dtype)


def save_dit(folder: str | Path, model) -> dict[str, str]:
    """Write `model` as a diffusers-layout folder (local or s3://); returns the sha256 of each file."""
    from components.dit import official

    return official.save_folder(folder, model)
