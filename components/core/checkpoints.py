"""Model folders and training state.

- A model folder is Hugging Face style: `config.json` + `model.safetensors`, so an artifact describes
  itself and loads without our code's classes being pickled into it.
- Training state (optimizer, scheduler, EMA, RNG, data position, step) is one `torch.save` file written
  atomically and read with `weights_only=True`: only tensors and plain Python containers, never
  arbitrary objects.
"""

from __future__ import annotations

import io
import random
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


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values, so they survive a weights_only load."""
    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype("int64")),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(uri: str | Path, state: dict[str, Any]) -> str:
    """Atomically write a training-state dict (tensors and plain containers only); returns its sha256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return storage.write_bytes(uri, buffer.getvalue())


def load_training_state(uri: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load a training-state file without unpickling arbitrary objects."""
    data = storage.read_bytes(uri, expected_sha256)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


