"""Model folders: what a stage hands to the next one (trainer checkpoints are `core/training/checkpoint.py`).

A model folder is Hugging Face style: `config.json` + `model.safetensors`, so an artifact describes
itself and loads without our code's classes being pickled into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from components.core import storage

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# The order in which a model folder's files are written: a folder with a config is complete, so the config
# goes last (a kill during an upload once left `model_raw/config.json` without its weights).
WRITE_ORDER = (WEIGHTS_FILE, CONFIG_FILE)


def save_model_folder(folder: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, str]:
    """Write weights then config (config last: a folder with a config is complete). Returns sha256s."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    storage.delete(storage.join(folder, CONFIG_FILE))  # overwriting: never pair an old config with new weights
    weights_sha = storage.write_bytes(storage.join(folder, WEIGHTS_FILE), save_safetensors(tensors))
    config_sha = storage.write_json(storage.join(folder, CONFIG_FILE), config)
    return {WEIGHTS_FILE: weights_sha, CONFIG_FILE: config_sha}


def put_model_folder(local: str | Path, folder: str | Path) -> dict[str, dict[str, Any]]:
    """Copy a model folder written locally (`save_model_folder`) into the store, in WRITE_ORDER (config
    last). Returns {file name: {uri, sha256, bytes}} for a manifest."""
    local = Path(local)
    names = sorted(path.name for path in local.iterdir() if path.is_file())
    ordered = sorted(names, key=lambda name: WRITE_ORDER.index(name) if name in WRITE_ORDER else -1)
    files = {}
    for name in ordered:
        uri = storage.join(folder, name)
        files[name] = {"uri": uri, "sha256": storage.put_file(local / name, uri), "bytes": (local / name).stat().st_size}
    return files


def load_model_folder(folder: str | Path, expected: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read `(config, state_dict)` from a model folder; verify sha256s when `expected` is given. A damaged
    or truncated weights file raises a ValueError naming it."""
    expected = expected or {}
    config = storage.read_json(storage.join(folder, CONFIG_FILE), expected.get(CONFIG_FILE))
    if not isinstance(config, dict):
        raise ValueError(f"{storage.join(folder, CONFIG_FILE)}: expected a JSON object, got {type(config).__name__}")
    weights_uri = storage.join(folder, WEIGHTS_FILE)
    try:
        weights = load_safetensors(storage.read_bytes(weights_uri, expected.get(WEIGHTS_FILE)))
    except SafetensorError as exc:
        raise ValueError(f"{weights_uri}: not a readable safetensors file (truncated or damaged): {exc}") from None
    return config, weights


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load `weights` into `module` strictly, naming `source` when names or shapes do not fit."""
    expected = module.state_dict()
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the configured model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}); check the preset's model group")
    wrong = [k for k, v in weights.items() if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{source}: weights have other shapes than the configured model: {wrong[:5]}")
    module.load_state_dict(weights)
