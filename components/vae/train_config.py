"""Training, data and evaluation groups of the VAE configuration (`train`, `data`, `eval`).

They sit beside `model` in the root `VAEConfig` (components/vae/config.py); presets set them in
`presets/<name>.yaml`. Defaults are the reference's v1.2 values (reference notes §1.9-1.11).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import StrictModel


class LossConfig(StrictModel):
    """Loss weights (reference notes §1.9)."""

    reconstruction: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = Field(1.0, ge=0)
    # LPIPS backbone of the perceptual term. The real one needs torchvision's pretrained weights in
    # $TORCH_HOME/hub/checkpoints (fetched automatically where there is internet); a random backbone
    # (seeded, with lpips' shipped linear heads) runs offline and is only fit for tests of the code path.
    lpips_backbone: Literal["vgg", "alex", "squeeze"] = "vgg"
    lpips_random_backbone: bool = False
    kl_weight: float = Field(1e-6, ge=0)
    disc_weight: float = Field(0.5, ge=0)
    disc_factor: float = Field(1.0, ge=0)
    adaptive_weight_max: float = Field(1e4, gt=0)


class DiscriminatorConfig(StrictModel):
    """3D PatchGAN (reference notes §1.9: 64 base channels, 3 layers, 4.67 M parameters)."""

    base_channels: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=1)


def check_bucket(bucket: str | None) -> str | None:
    """A training crop "FxHxW" the VAE can take: F = 4k+1 frames (1: images), H and W multiples of 8."""
    if bucket is None:
        return None
    parts = bucket.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bucket must be 'FxHxW', e.g. 25x256x256; got {bucket!r}")
    frames, height, width = map(int, parts)
    if (frames - 1) % 4 or height % 8 or width % 8:
        raise ValueError(f"bucket {bucket}: frames must be 4k+1, height and width multiples of 8")
    return bucket


class PhaseConfig(StrictModel):
    """One phase's length, and what it trains on where that differs from `data` and `train.lr`."""

    steps: int = Field(ge=1)  # optimizer steps (generator and discriminator steps both count)
    bucket: str | None = None  # replaces data.bucket in this phase (e.g. image crops 1xHxW, then video)
    batch_size: int | None = Field(None, ge=1)  # replaces data.batch_size (per process)
    crops_per_clip: int | None = Field(None, ge=1)  # replaces data.crops_per_clip
    lr: float | None = Field(None, gt=0)  # replaces train.lr

    _bucket = field_validator("bucket")(lambda bucket: check_bucket(bucket))


class TrainConfig(StrictModel):
    """`t2v vae train` (reference notes §1.10)."""

    seed: int = 0
    device: str = "auto"  # auto, cuda, npu, cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 needs no GradScaler (reference pitfall §9.18)
    phase1: PhaseConfig = PhaseConfig(steps=200_000)  # Kinetics-400 in the Report
    phase2: PhaseConfig = PhaseConfig(steps=450_000)  # HQ data, initialised from phase-1 EMA weights
    lr: float = Field(1e-5, gt=0)  # Adam, both optimizers, no schedule, no clipping
    disc_lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    disc_start: int = Field(2000, ge=0)  # from this step on, generator and discriminator steps alternate
    sample_posterior: bool = True  # train on z ~ q(z|x) as the reference; false: the posterior mean
    # Set the exported `scale_factor` to 1 / std of the posterior means over this many training batches (the
    # way SD's 0.18215 was found), so the DiT sees unit-variance latents. For a VAE trained from scratch:
    # its latents have no reason to match SD's scale. 0 keeps model.scale_factor (v1.2: SD's, as released).
    calibrate_scale_batches: int = Field(0, ge=0)
    # From scratch only (phase 1 without --init): the posterior's log-variance starts near this value
    # (the bias of the layer that emits it) instead of ~0. With std ~1 the sampled latents of a fresh
    # encoder are mostly noise, and a small VAE learns to ignore them and output the data's mean
    # (posterior collapse: the tiny demo stalled at ~8-17 dB). None: the layer's default init.
    init_logvar: float | None = Field(None, ge=-30, le=20)
    loss: LossConfig = LossConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    checkpoint_every: int = Field(2000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)  # older step-N.pt files are deleted
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(2000, ge=1)  # reconstruction grid PNG and side-by-side mp4 to MLflow
    max_bad_steps: int = Field(3, ge=1)  # consecutive non-finite steps before rolling back to a checkpoint
    max_rollbacks: int = Field(5, ge=0)  # then give up with an error
    # Test hook: the batches with these indices (0-based, in loader order) are replaced by NaN.
    inject_nan_batches: list[int] = []


class DataConfig(StrictModel):
    """Training clips: one video bucket of the shard manifest (v1.2: 25×256×256, reference notes §1.10)."""

    # "FxHxW" as named in the shard manifest. 1xHxW (with crop_larger) trains on random single frames of the
    # clips: the causal VAE's first-frame path, i.e. static scenes. A small VAE from scratch learns colour
    # and shape there in far fewer steps than on video (bench/RESULTS.md), then a video phase adds motion.
    bucket: str = "25x256x256"
    # Also train on the clips of every bucket at least as long, high and wide as `bucket`, each cut to
    # `bucket`'s size at a seeded random offset (the reference's VAE data is random crops too). Small
    # data sets spread their clips over many buckets: this trains on all of them, not one bucket's few.
    crop_larger: bool = False
    batch_size: int = Field(1, ge=1)  # clips per process and step
    # With crop_larger: crops cut from each clip at independent offsets, all trained on in the same step
    # (a step sees batch_size x crops_per_clip crops). Small image crops of a few clips per bucket: the
    # loader's batches come from one bucket, so more crops per clip is how such a step gets larger.
    crops_per_clip: int = Field(1, ge=1)
    shuffle_shards: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)

    _bucket = field_validator("bucket")(lambda bucket: check_bucket(bucket))

    @model_validator(mode="after")
    def _crops_need_crop_larger(self) -> DataConfig:
        if self.crops_per_clip > 1 and not self.crop_larger:
            raise ValueError("crops_per_clip > 1 needs crop_larger: true (crops are cut only then)")
        return self

    @property
    def frames(self) -> int:
        return int(self.bucket.split("x")[0])

    @property
    def size(self) -> tuple[int, int, int]:
        """(frames, height, width) of a training clip."""
        frames, height, width = map(int, self.bucket.split("x"))
        return frames, height, width


class EvalConfig(StrictModel):
    """`t2v vae eval` (reference notes §1.11): short side resized, centre crop, consecutive frames."""

    num_frames: int = Field(33, ge=1)  # 4k+1
    resolution: int = Field(256, ge=8)  # short side after resize and crop side (multiple of 8)
    max_clips: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # fp32 by default: metrics of the weights, not of bf16
    lpips_backbone: Literal["alex", "vgg", "squeeze"] = "alex"  # the reference reports LPIPS-alex
    lpips_random_backbone: bool = False
    seed: int = 0  # seeds the random LPIPS backbone when one is used
    preview_clips: int = Field(2, ge=0)  # clips shown in the grid PNG and the side-by-side mp4

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, frames: int) -> int:
        if (frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (causal VAE frame rule, reference notes §1.5); got {frames}")
        return frames

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, resolution: int) -> int:
        if resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8; got {resolution}")
        return resolution
