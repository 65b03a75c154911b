"""What VAE training starts from: its inputs (checked), the hash of what shapes the weights, the loader."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from components.core import manifest, model_folder, stage, storage
from components.core.distributed import Context
from components.core.training import checkpoint
from components.vae.config import VAEConfig
from components.vae.train_config import DataConfig

STAGES = {1: "vae-phase1", 2: "vae-phase2"}


@dataclass
class Handoff:
    """Where the generator starts: a phase-1 output (EMA weights + discriminator) or a plain model folder."""

    model_folder: str
    input_entry: dict[str, str]
    lineage: dict[str, str] = field(default_factory=dict)
    discriminator_checkpoint: str | None = None
    # Phase 1 trained on 1-frame crops: its causal kernels learned only their sums over time, which phase 2
    # puts on the current frame (`tail_init.image_kernels_to_tail`).
    from_images: bool = False


def read_init(init: str, phase: int) -> Handoff:
    """Phase 2 needs a finished phase-1 output (its files checked against its manifest); phase 1 may start
    from any VAE model folder (tail init)."""
    init_manifest = manifest.read_manifest(init)
    if init_manifest is not None and init_manifest.get("stage") == STAGES[1]:
        try:
            stage.check_unchanged(init, init_manifest, "model/")
        except ValueError as exc:
            raise ValueError(f"--init {init}: {exc}") from None
        final = storage.join(init, init_manifest["final_checkpoint"])
        reason = checkpoint.damage(final)
        if reason is not None:
            raise ValueError(f"--init {init}: its final checkpoint {final} is damaged ({reason}); re-run phase 1")
        entry = stage.input_file(manifest.manifest_uri(init))
        return Handoff(
            model_folder=storage.join(init, "model"),
            input_entry=entry,
            lineage={"lineage.phase1_run_id": str(init_manifest.get("mlflow_run_id")),
                     "lineage.phase1_manifest_sha256": entry["sha256"], "lineage.phase1_uri": str(init)},
            discriminator_checkpoint=final,
            from_images=_trained_on_images(init_manifest),
        )
    if phase == 2:
        raise ValueError(f"--init {init}: phase 2 needs a finished phase-1 output folder (manifest.json with "
                         f"stage '{STAGES[1]}'); found {'no manifest' if init_manifest is None else init_manifest.get('stage')}")
    if not any(uri.endswith("/" + model_folder.CONFIG_FILE) for uri in storage.list_files(init)):
        raise FileNotFoundError(f"--init {init}: neither a phase-1 output nor a VAE model folder (no config.json)")
    return Handoff(model_folder=str(init), input_entry={"uri": str(init), "sha256": stage.folder_sha256(init)},
                   lineage={"lineage.init_model": str(init)})


def _trained_on_images(phase1_manifest: dict) -> bool:
    """Whether a phase-1 output trained on 1-frame crops (its manifest's config has the phase applied)."""
    return DataConfig.model_validate(phase1_manifest["config"]["data"]).frames == 1


# Settings that do not change the trained weights: where and how often to log, sample, checkpoint, and
# the evaluation and launch groups. Changing them must not make a finished phase look unfinished.
_TRAIN_FIELDS_NOT_IN_HASH = {"device", "checkpoint_every", "keep_checkpoints", "log_every", "sample_every"}


def weights_hash(phase: int, config: VAEConfig, world_size: int, handoff: Handoff | None = None) -> str:
    """sha256 of what determines the trained weights; the global batch counts, not how it is split."""
    data = config.data.model_dump(mode="json", exclude={"batch_size", "num_workers"})
    payload = {
        "phase": phase,
        **({"start": "image-kernels-to-tail"} if handoff and handoff.from_images else {}),
        "model": config.model.model_dump(mode="json"),
        # The other phase's block is not this phase's weights (its lr/bucket are applied by for_phase).
        "train": config.train.model_dump(mode="json", exclude={*_TRAIN_FIELDS_NOT_IN_HASH, f"phase{3 - phase}"}),
        "data": {**data, "global_batch": config.data.batch_size * world_size},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def open_loader(data_manifest: str, config: VAEConfig, seed: int, ctx: Context):
    """This rank's slice of every global batch of one video bucket (reference notes §1.10: 25×256×256).

    The "global" layout makes the samples of a step independent of the number of ranks, so a run
    saved at N processes continues at M with the same data (per-process batch × ranks kept equal).
    """
    from components.data.loader import BucketLoader, LoaderConfig  # the data component's public read API

    data = config.data
    buckets = _buckets(data_manifest, config) if data.crop_larger else [data.bucket]
    loader_config = LoaderConfig(buckets=buckets, batch_size_overrides=dict.fromkeys(buckets, data.batch_size),
                                 seed=seed, shuffle_shards=data.shuffle_shards, num_workers=data.num_workers,
                                 min_frames=2, rank_layout="global")
    return BucketLoader(data_manifest, loader_config, rank=ctx.dp_rank, world_size=ctx.dp_size)


def _buckets(data_manifest: str, config: VAEConfig) -> list[str]:
    """The manifest's video buckets that hold a `data.bucket`-sized crop (data.crop_larger)."""
    from components.data.loader import BucketLoader, LoaderConfig

    frames, height, width = config.data.size
    every = BucketLoader(data_manifest, LoaderConfig(min_frames=max(frames, 2)), rank=0, world_size=1).bucket_shapes
    names = [b.name for b in every if b.height >= height and b.width >= width]
    if not names:
        raise ValueError(f"{data_manifest}: no bucket holds a {config.data.bucket} crop (vae.data.bucket with "
                         f"data.crop_larger; buckets: {', '.join(b.name for b in every) or 'none that long'})")
    return names


def crop(video: torch.Tensor, keys: list[str], config: VAEConfig, batch_index: int) -> torch.Tensor:
    """Each clip of (b, 3, T, H, W) cut `data.crops_per_clip` times to `data.bucket`'s size at offsets drawn
    from (seed, batch, key): the same crops on any number of ranks and after a resume, with no generator
    state to save."""
    frames, height, width = config.data.size
    per_clip = config.data.crops_per_clip
    if video.shape[2:] == (frames, height, width) and per_clip == 1:
        return video
    crops = []
    for clip, key in zip(video, keys, strict=True):  # (3, T, H, W)
        digest = hashlib.sha256(f"{config.train.seed}:{batch_index}:{key}".encode()).digest()
        draw = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        for _ in range(per_clip):
            start = [int(torch.randint(0, total - size + 1, (), generator=draw))
                     for total, size in zip(clip.shape[1:], (frames, height, width), strict=True)]
            crops.append(clip[:, start[0]:start[0] + frames, start[1]:start[1] + height, start[2]:start[2] + width])
    return torch.stack(crops)  # (b * crops_per_clip, 3, F, H', W')
