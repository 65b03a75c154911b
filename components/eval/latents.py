"""The evaluation's view of a latent folder (`t2v dit encode`): its training captions, its held-out `val/`
set, and the validation loss of a sampler's DiT on that set. Reads through the DiT component's public
latent loader (`components.dit.latents`), never the shards themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from components.core import manifest, storage
from components.eval.config import ValLossConfig

VAL_FOLDER = "val"


def manifest_of(data: str) -> str:
    """The latent manifest URI of a latent folder (or of its manifest.json); an error names what is wrong."""
    from components.dit.latents import read_latent_manifest

    return read_latent_manifest(data)[1]


def _folder(latent_manifest: str) -> str:
    return latent_manifest.rsplit("/", 1)[0]


def has_validation_set(latent_manifest: str) -> bool:
    """A small latent folder may hold no held-out clip at all (the split is a hash of each clip's key)."""
    return storage.exists(storage.join(_folder(latent_manifest), VAL_FOLDER, manifest.MANIFEST_FILE))


def _val_manifest(latent_manifest: str) -> str:
    uri = storage.join(_folder(latent_manifest), VAL_FOLDER, manifest.MANIFEST_FILE)
    if not has_validation_set(latent_manifest):
        raise ValueError(f"{_folder(latent_manifest)} has no held-out {VAL_FOLDER}/ set: encode with a validation "
                         "share, or set eval.val_loss.enabled=false and eval.prompts.source=shapes")
    return uri


def _samples(manifest_uri: str) -> Iterator[dict[str, Any]]:
    """Every sample of a latent manifest once, one per batch (no bucket remainder left out), in the order of
    the loader's epoch-0 schedule with a fixed seed: the same samples in the same order on every run."""
    from components.dit.latents import LoaderConfig, open_latents

    yield from open_latents(manifest_uri, LoaderConfig(batch_tokens=1, max_batch_size=1, shuffle_shards=1, seed=0),
                            rank=0, world_size=1)


def training_captions(latent_manifest: str) -> list[str]:
    """The caption of every sample the DiT was trained on (the latent folder's train split)."""
    return [caption for batch in _samples(latent_manifest) for caption in batch["caption"]]


def validation_captions(latent_manifest: str, count: int) -> list[str]:
    """The first `count` distinct captions of the held-out set."""
    found: list[str] = []
    for batch in _samples(_val_manifest(latent_manifest)):
        found += [c for c in batch["caption"] if c not in found]
        if len(found) >= count:
            break
    return found[:count]


def validation_loss(sampler, latent_manifest: str, config: ValLossConfig) -> dict[str, Any]:
    """The loss of the sampler's (EMA) DiT per fixed timestep on the held-out set (`val_loss.py`)."""
    from components.dit.diffusion import make_scheduler
    from components.eval.val_loss import fixed_timesteps
    from components.eval.val_loss import validation_loss as loss_per_timestep

    diffusion = sampler.sources.diffusion
    val_manifest = _val_manifest(latent_manifest)
    scale_factor = float(storage.read_json(latent_manifest).get("scale_factor") or sampler.sources.scale_factor)
    result = loss_per_timestep(
        sampler.dit, _samples(val_manifest), scale_factor, make_scheduler(diffusion), diffusion.prediction_type,
        fixed_timesteps(config.num_timesteps, diffusion.num_train_timesteps), config.seed, config.max_samples,
        config.forward_batch)
    return {**result, "data": val_manifest, "scale_factor": scale_factor, "seed": config.seed,
            "protocol": "posterior mean x scale_factor; noise of sample i from seed + i, the same at every timestep; "
                        "no noise offset, no caption dropout; unweighted MSE of the training target"}
