"""Causal video VAE (Open-Sora Plan v1.2): `load_vae` returns a `CausalVAE` with `encode`/`decode`.

    vae = load_vae("s3://bucket/vae")                # our folder or an official v1.2 folder
    latents = vae.encode(video).mode() * vae.config.scale_factor   # video (B, 3, T, H, W) in [-1, 1]
    video = vae.decode(latents / vae.config.scale_factor)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from components.core import model_folder, storage

# Files worth fetching from a remote folder: our weights, or an official checkpoint.
_FOLDER_FILES = {model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE, "checkpoint.ckpt", "checkpoint.safetensors",
                 "diffusion_pytorch_model.safetensors"}


def load_vae(path_or_uri: str | Path, weights: Literal["ema", "model"] = "ema"):
    """Load a VAE folder (ours or official v1.2; local path or s3:// URI) as an eval-mode `CausalVAE` on CPU.

    `weights` picks the EMA or the raw weights of an official training checkpoint (ignored for ours).
    """
    uri = str(path_or_uri)
    if storage.is_s3(uri):
        with storage.staging_dir("t2v-vae-") as staging:
            for file_uri in storage.list_files(uri):
                name = storage.relative_to(file_uri, uri)
                if name in _FOLDER_FILES:
                    storage.get_file(file_uri, Path(staging) / name)
            return _load_local(Path(staging), weights)
    return _load_local(Path(storage.local_dir(uri)), weights)


def read_vae_config(path_or_uri: str | Path):
    """The architecture (`VAEModelConfig`: compression, latent channels, scale factor) of a VAE folder, ours
    or official, from its config.json alone (nothing else is read)."""
    from components.vae import official
    from components.vae.config import VAEModelConfig

    config_uri = storage.join(str(path_or_uri), model_folder.CONFIG_FILE)
    if not storage.exists(config_uri):
        raise FileNotFoundError(f"{path_or_uri}: not a VAE folder (no {model_folder.CONFIG_FILE})")
    raw = storage.read_json(config_uri)
    if official.is_our_format(raw):
        return VAEModelConfig.model_validate(raw.get("model"))
    return official.official_to_config(raw, source=config_uri)


def _load_local(folder: Path, weights: Literal["ema", "model"]):
    from components.vae import official

    config_path = folder / model_folder.CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: not a VAE folder (no {model_folder.CONFIG_FILE})")
    if official.is_our_format(storage.read_json(config_path)):
        return official.load_ours(folder)
    return official.load_official(folder, weights)
