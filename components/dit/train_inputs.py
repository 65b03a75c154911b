"""What a DiT training stage starts from: its latent folder and buckets, the previous stage (checked), the
hash of what shapes the weights, and what sampling must know about the latents (`conditioning.json`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from components.core import manifest, stage, storage
from components.core.distributed import Context
from components.dit.config import DiTConfig, DiTModelConfig
from components.dit.train_config import StageConfig


def stage_name(number: int) -> str:
    return f"dit-stage{number}"


@dataclass
class Handoff:
    """Where stage k > 1 starts: stage k - 1's EMA weights (its `model_ema/`), recorded as lineage."""

    model_folder: str
    input_entry: dict[str, str]
    lineage: dict[str, str] = field(default_factory=dict)


def read_init(init: str, number: int) -> Handoff:
    """Stage k > 1 needs stage k - 1's finished output, its EMA weights unchanged since; stage 1 may start
    from any finished DiT stage output (e.g. a previous curriculum's)."""
    init_manifest = manifest.read_manifest(init)
    wanted = stage_name(number - 1) if number > 1 else None
    found = None if init_manifest is None else init_manifest.get("stage")
    if found is None or not str(found).startswith("dit-stage") or (wanted and found != wanted):
        raise ValueError(f"--init {init}: stage {number} starts from {wanted or 'a DiT stage'}'s finished output "
                         f"folder (manifest.json with stage '{wanted or 'dit-stageN'}'); found "
                         f"{'no manifest' if init_manifest is None else repr(found)}")
    try:
        stage.check_unchanged(init, init_manifest, "model_ema/")
    except ValueError as exc:
        raise ValueError(f"--init {init}: {exc}") from None
    entry = stage.input_file(manifest.manifest_uri(init))
    return Handoff(
        model_folder=storage.join(init, "model_ema"),
        input_entry=entry,
        lineage={"lineage.init_stage": str(found), "lineage.init_run_id": str(init_manifest.get("mlflow_run_id")),
                 "lineage.init_manifest_sha256": entry["sha256"], "lineage.init_uri": str(init)},
    )


def stage_model(config: DiTConfig, stage_config: StageConfig) -> DiTModelConfig:
    """The architecture with this stage's RoPE interpolation scales (the only per-stage model setting: with
    RoPE and no absolute position embedding every weight transfers between stages, reference notes §3.4)."""
    scale_t, scale_h, scale_w = stage_config.interpolation_scales
    return config.model.model_copy(update={"interpolation_scale_t": scale_t, "interpolation_scale_h": scale_h,
                                           "interpolation_scale_w": scale_w})


def select_buckets(latent_manifest: dict[str, Any], uri: str, number: int, stage_config: StageConfig) -> list[str]:
    """The names of the latent folder's buckets that stage `number` trains on; a ValueError lists what is there."""
    available = [(b["name"], int(b["frames"]), int(b["height"]), int(b["width"])) for b in latent_manifest["buckets"]]
    names = [name for name, frames, height, width in available if stage_config.selects(frames, height, width)]
    missing = sorted(set(stage_config.buckets or []) - {name for name, *_ in available})
    if missing or not names:
        raise ValueError(f"train.stages[{number - 1}] (stage {number}) selects "
                         f"{'buckets ' + str(missing) + ' that are' if missing else 'no bucket'} not in {uri}; "
                         f"it has {sorted(name for name, *_ in available)}")
    return names


def open_loader(data_manifest: str, buckets: list[str], config: DiTConfig, stage_config: StageConfig, ctx: Context):
    """This rank's slice of every global batch of the stage's buckets, batch sizes from the token budget.

    The "global" layout makes the samples of a step independent of the number of ranks, so a run saved at N
    processes continues at M with the same data (per-rank budget x ranks kept equal)."""
    from components.data.loader import LoaderConfig  # the data component's public read API
    from components.dit.latents import open_latents

    loader_config = LoaderConfig(buckets=buckets, batch_tokens=stage_config.batch_tokens,
                                 max_batch_size=stage_config.max_batch_size, seed=config.train.seed,
                                 shuffle_shards=config.train.shuffle_shards, num_workers=config.train.num_workers,
                                 patch_size=(config.model.patch_size_t, config.model.patch_size, config.model.patch_size),
                                 rank_layout="global")
    return open_latents(data_manifest, loader_config, rank=ctx.dp_rank, world_size=ctx.dp_size)


def conditioning_record(latent_manifest: dict[str, Any], uri: str, root: str) -> dict[str, Any]:
    """What the model was trained with, copied from the latent manifest (`uri`, of the latent folder `root`):
    sampling decodes with this VAE and scale factor and encodes prompts with this text encoder, whose folder
    URI is made absolute here (the latent manifest names it inside the latent folder)."""
    encoder = dict(latent_manifest["text_encoder"])
    if not (storage.is_s3(encoder["uri"]) or encoder["uri"].startswith("/")):
        encoder["uri"] = storage.join(root, encoder["uri"])
    return {"vae": latent_manifest["vae"], "scale_factor": latent_manifest["scale_factor"],
            "text_encoder": encoder, "latents": uri}


# Settings that do not change the trained weights: where and how often to log and checkpoint, loader
# workers, memory-saving recomputation, and the other stages. Changing them must not make a finished stage
# look unfinished, nor forbid resuming it.
_TRAIN_FIELDS_NOT_IN_HASH = {"device", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "stages"}
_MODEL_FIELDS_NOT_IN_HASH = {"gradient_checkpointing", "sublayer_checkpointing", "mlp_checkpoint_tokens"}


def weights_hash(number: int, config: DiTConfig, stage_config: StageConfig, global_batches: dict[str, int]) -> str:
    """sha256 of what determines the trained weights; the global batch of each bucket counts, not its split."""
    payload = {
        "stage": number,
        "model": stage_model(config, stage_config).model_dump(mode="json", exclude=_MODEL_FIELDS_NOT_IN_HASH),
        "diffusion": config.diffusion.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json", exclude=_TRAIN_FIELDS_NOT_IN_HASH),
        # The data is an input; the token budget counts through the global batches it gives.
        "stage_config": stage_config.model_dump(mode="json", exclude={"data", "batch_tokens", "max_batch_size"}),
        "global_batches": dict(sorted(global_batches.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
