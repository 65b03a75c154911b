"""What a sampler loads, found from the DiT it is given: the DiT model folder, and the VAE and text encoder
the model was trained with.

`--dit` is one of
- our DiT stage folder (`model_ema/`, `model/`, `conditioning.json`), or one of its model subfolders;
- an official Open-Sora Plan v1.2 folder (diffusers layout, no conditioning.json: `--vae` and
  `--text-encoder` are then required);
- an MLflow registered model, `models:/<name>@<alias>` (e.g. `models:/t2v-dit@stage5`) or
  `models:/<name>/<version>`. The version's tag `folder` (the stage folder URI) wins; without it the
  version's own artifacts are downloaded once into `$T2V_HOME/models/<name>/<version>`, with the
  conditioning.json that the run logged beside them (`runs:/<run>/conditioning.json` for a version whose
  source is `runs:/<run>/model_ema`) or inside them.

`conditioning.json` (written by `t2v dit train` from the latent manifest) = {"vae": {"uri", "sha256"},
"scale_factor", "text_encoder": {"uri", "max_length"}, "latents"}. Latents were multiplied by its
`scale_factor` for training, so the sampler divides by the same number before decoding; without one the
VAE's own config gives it (reference notes §4: v1.2's 0.18215).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core import manifest, storage, tracking
from components.dit.config import DiffusionConfig, DiTModelConfig, LatentConfig

CONDITIONING_FILE = "conditioning.json"
FOLDER_TAG = "folder"  # model-version tag holding the DiT stage folder URI
_MODEL_SUBFOLDERS = ("model_ema", "model")


@dataclass(frozen=True)
class SamplingSources:
    """Resolved inputs of a sampler, with the architectures it checks sizes against (configs only)."""

    dit: str  # as the user gave it
    dit_folder: str  # a folder `load_dit` accepts
    model_folder: str  # the model folder inside it whose weights load (e.g. the stage folder's model_ema/)
    weights: str  # "ema" or "model": which weights of a stage folder
    vae: str
    text_encoder: str
    text_max_length: int | None  # None: the encoder folder's own setting
    scale_factor: float
    dit_config: DiTModelConfig
    vae_config: Any  # components.vae.config.VAEModelConfig
    diffusion: DiffusionConfig  # the training schedule the scheduler is built on
    registered_model: dict[str, Any] | None = None
    conditioning: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def latent(self) -> LatentConfig:
        return LatentConfig(temporal_compression=self.vae_config.temporal_compression,
                            spatial_compression=self.vae_config.spatial_compression)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) latents for a clip; ValueError naming the size when the VAE or the patch rejects it."""
        latent = self.latent.latent_shape(frames, height, width, self.dit_config.patch_size)
        self.dit_config.token_grid(*latent)
        return (self.dit_config.in_channels, *latent)


def resolve_sources(dit: str, vae: str | None = None, text_encoder: str | None = None,
                    weights: str = "ema") -> SamplingSources:
    """Find the DiT folder, its conditioning and the configs of the DiT and the VAE; reads configs only."""
    from components.dit import _model_folder, read_dit_config
    from components.vae import read_vae_config

    dit = str(dit)
    registered = tracking.registered_version(dit) if dit.startswith("models:/") else None
    folder = _registered_folder(registered) if registered else dit.rstrip("/")
    conditioning_uri = _conditioning_uri(folder)
    conditioning = storage.read_json(conditioning_uri) if conditioning_uri else None
    if conditioning is None and (vae is None or text_encoder is None):
        raise ValueError(f"{dit}: no {CONDITIONING_FILE} beside the model (an official folder?): give the VAE "
                         f"and text encoder it was trained with, --vae and --text-encoder")
    conditioning = conditioning or {}
    vae_uri = vae or _field(conditioning, conditioning_uri, "vae", "uri")
    text_uri = text_encoder or _field(conditioning, conditioning_uri, "text_encoder", "uri")
    max_length = None if text_encoder else conditioning["text_encoder"].get("max_length")
    dit_config = read_dit_config(folder, weights)
    vae_config = read_vae_config(vae_uri)
    if vae_config.latent_channels != dit_config.in_channels:
        raise ValueError(f"VAE {vae_uri} has {vae_config.latent_channels} latent channels, the DiT {dit} "
                         f"takes {dit_config.in_channels}")
    scale_factor = float(conditioning.get("scale_factor") or vae_config.scale_factor)
    return SamplingSources(dit=dit, dit_folder=folder, model_folder=_model_folder(folder, weights), weights=weights,
                           vae=vae_uri, text_encoder=text_uri,
                           text_max_length=max_length, scale_factor=scale_factor, dit_config=dit_config,
                           vae_config=vae_config, diffusion=_training_diffusion(folder),
                           registered_model=registered, conditioning=conditioning or None)


def folder_sha256(uri: str) -> str | None:
    """One checksum over a model folder's files (names and contents), streamed; None for a built-in
    source such as the `tiny` text encoder."""
    if not storage.is_s3(uri) and not Path(storage.local_dir(uri) or uri).is_dir():
        return None
    digest = hashlib.sha256()
    for file_uri in sorted(storage.list_files(uri)):
        local = storage.local_dir(file_uri)
        sha = storage.sha256_file(local) if local else storage.sha256_bytes(storage.read_bytes(file_uri))
        digest.update(f"{storage.relative_to(file_uri, uri)}:{sha};".encode())
    return digest.hexdigest()


def _field(conditioning: dict[str, Any], uri: str | None, group: str, key: str) -> str:
    value = (conditioning.get(group) or {}).get(key)
    if not value:
        raise ValueError(f"{uri}: field '{group}.{key}' is missing")
    return str(value)


def _conditioning_uri(folder: str) -> str | None:
    """conditioning.json in the folder, or beside it when the folder is a stage folder's model_ema/ or model/."""
    candidates = [storage.join(folder, CONDITIONING_FILE)]
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    if name in _MODEL_SUBFOLDERS:
        candidates.append(storage.join(folder.rstrip("/").rsplit("/", 1)[0], CONDITIONING_FILE))
    return next((uri for uri in candidates if storage.exists(uri)), None)


def _training_diffusion(folder: str) -> DiffusionConfig:
    """The noise schedule the model was trained on, from its stage manifest; v1.2's (the defaults) for a
    folder without one, as official folders are."""
    stage = folder
    if stage.rstrip("/").rsplit("/", 1)[-1] in _MODEL_SUBFOLDERS:
        stage = stage.rstrip("/").rsplit("/", 1)[0]
    found = manifest.read_manifest(stage)
    schedule = ((found or {}).get("config") or {}).get("diffusion")
    return DiffusionConfig.model_validate(schedule) if schedule else DiffusionConfig()


def _registered_folder(version: dict[str, Any]) -> str:
    """The stage folder a registered version names (tag `folder`), else its artifacts, downloaded once, with
    the run's conditioning.json logged beside them when there is one."""
    if version["tags"].get(FOLDER_TAG):
        return version["tags"][FOLDER_TAG]
    cache = tracking.t2v_home() / "models" / version["name"] / version["version"]
    done = cache / ".downloaded"  # holds the local path, written once the download is whole
    if not done.is_file():
        model = tracking.download_artifacts(version["source"], cache / "artifacts")
        if version["source"].startswith("runs:/") and not (model / CONDITIONING_FILE).is_file():
            beside = version["source"].rstrip("/").rsplit("/", 1)[0]  # runs:/<run>/model_ema -> runs:/<run>
            found = tracking.download_artifacts(f"{beside}/{CONDITIONING_FILE}", cache / "run", missing_ok=True)
            if found is not None:
                found.replace(model / CONDITIONING_FILE)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(str(model))
    return done.read_text()
