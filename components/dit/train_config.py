"""Training group of the DiT configuration (`train`): optimisation, EMA, checkpoints and the stage curriculum.

It sits beside `model` in the root `DiTConfig` (components/dit/config.py); presets set it in
`presets/<name>.yaml`. Defaults are the reference's v1.2 values (reference notes §3.2-3.5).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import StrictModel


class OptimizerConfig(StrictModel):
    """AdamW with a constant learning rate and gradient clipping (reference notes §3.2)."""

    lr: float = Field(1e-4, gt=0)  # a stage's `lr` replaces it
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)  # None: no clipping


class StageConfig(StrictModel):
    """One stage of the curriculum (reference notes §3.5): which buckets, how long, how big a step.

    Buckets are the latent manifest's pixel names "FxHxW"; without `buckets`, every bucket whose frames
    lie in [min_frames, max_frames] and whose height x width lies in [min_pixels, max_pixels].
    """

    buckets: list[str] | None = None
    min_frames: int = Field(1, ge=1)
    max_frames: int | None = Field(None, ge=1)
    min_pixels: int = Field(1, ge=1)  # height x width of a frame
    max_pixels: int | None = Field(None, ge=1)
    steps: int = Field(ge=1)
    # Latent tokens per rank and step: a bucket's batch is batch_tokens // tokens per sample, so a larger
    # bucket gets a smaller batch (never dropped: at least one sample, however large).
    batch_tokens: int = Field(ge=1)
    max_batch_size: int = Field(64, ge=1)
    lr: float | None = Field(None, gt=0)  # None: optimizer.lr
    interpolation_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RoPE (t, h, w), reference notes §2.6
    data: str | None = None  # a latent folder for this stage instead of --data (e.g. an image set)

    @field_validator("buckets")
    @classmethod
    def _frames_height_width(cls, buckets: list[str] | None) -> list[str] | None:
        for bucket in buckets or []:
            parts = bucket.split("x")
            if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f"bucket must be 'FxHxW' in pixels, e.g. 29x480x640; got {bucket!r}")
        return buckets

    @field_validator("interpolation_scales")
    @classmethod
    def _positive(cls, scales: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(scales) <= 0:
            raise ValueError(f"interpolation scales must be positive; got {scales}")
        return scales

    def selects(self, frames: int, height: int, width: int) -> bool:
        """Whether a bucket of that pixel size belongs to this stage."""
        if self.buckets is not None:
            return f"{frames}x{height}x{width}" in self.buckets
        return (frames >= self.min_frames and (self.max_frames is None or frames <= self.max_frames)
                and self.min_pixels <= height * width and (self.max_pixels is None or height * width <= self.max_pixels))


class TrainConfig(StrictModel):
    """`t2v dit train --stage N` (reference notes §3): what every stage shares, and the stages."""

    seed: int = 0
    device: str = "auto"  # auto, cuda, npu, cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on accelerators, fp32 on CPU
    optimizer: OptimizerConfig = OptimizerConfig()
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True  # diffusers' min(decay, (1 + s) / (10 + s)), as the reference (§3.3)
    checkpoint_every: int = Field(250, ge=1)  # the reference's GPU scripts (§3.4)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    max_bad_steps: int = Field(3, ge=1)  # consecutive non-finite steps before rolling back to a checkpoint
    max_rollbacks: int = Field(5, ge=0)
    shuffle_shards: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)  # loader worker processes per rank
    stages: list[StageConfig] = []  # `t2v dit train --stage N` runs the N-th (reference notes §3.5)

    @model_validator(mode="after")
    def _frames_in_order(self) -> TrainConfig:
        for number, stage in enumerate(self.stages, 1):
            for low, high in (("min_frames", "max_frames"), ("min_pixels", "max_pixels")):
                if getattr(stage, high) is not None and getattr(stage, high) < getattr(stage, low):
                    raise ValueError(f"train.stages[{number - 1}] (stage {number}): {high} {getattr(stage, high)} "
                                     f"< {low} {getattr(stage, low)}")
        return self

    def stage(self, number: int) -> StageConfig:
        """Stage `number`, counted from 1 as on the command line."""
        if not self.stages:
            raise ValueError(f"--stage {number}: the preset defines no training stages (train.stages)")
        if not 1 <= number <= len(self.stages):
            raise ValueError(f"--stage {number}: the preset defines stages 1 to {len(self.stages)}")
        return self.stages[number - 1]

    def lr(self, number: int) -> float:
        return self.stage(number).lr or self.optimizer.lr
