"""The DiT training loop (`fit`) and its state between steps (what a resume needs is in the checkpoint)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from components.core import distributed, runtime
from components.core.distributed import Context
from components.core.progress import Progress
from components.core.training import checkpoint
from components.core.training.events import EventLog
from components.core.training.guard import BadStep, Guard, next_usable_batch, on_bad_step
from components.core.training.rng import rng_state, set_rng_state
from components.core.training.run import RankRun
from components.dit.config import DiTConfig
from components.dit.train_inputs import stage_name
from components.dit.train_step import Conditioning, Parts, StepResult, train_step

log = logging.getLogger(__name__)

QUARTILES = 4  # the loss is logged per quarter of the timestep range too (early vs late denoising)


@dataclass
class Interval:
    """Sums over the steps since the last log line (this rank's; averaged over the ranks when logged)."""

    loss: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0  # global latent tokens
    quartile_loss: list[float] = field(default_factory=lambda: [0.0] * QUARTILES)
    quartile_count: list[int] = field(default_factory=lambda: [0] * QUARTILES)

    def add(self, result: StepResult, seconds: float, tokens: int, num_train_timesteps: int) -> None:
        self.loss += result.loss
        self.grad_norm += result.grad_norm
        self.steps += 1
        self.seconds += seconds
        self.tokens += tokens
        quartiles = (result.timesteps * QUARTILES // num_train_timesteps).tolist()
        for quartile, value in zip(quartiles, result.per_sample.tolist(), strict=True):
            self.quartile_loss[quartile] += value
            self.quartile_count[quartile] += 1

    def metrics(self, ctx: Context) -> dict[str, float]:
        """Means over the interval and the ranks; a quartile's mean over every rank's samples in it."""
        sums = {"loss": self.loss / self.steps, "grad_norm": self.grad_norm / self.steps}
        sums |= {f"q{q}_sum": self.quartile_loss[q] for q in range(QUARTILES)}
        sums |= {f"q{q}_count": float(self.quartile_count[q]) for q in range(QUARTILES)}
        means = distributed.mean_over_ranks(sums, ctx)
        metrics = {"train/loss": means["loss"], "train/grad_norm": means["grad_norm"],
                   "train/step_time_s": self.seconds / self.steps,
                   "train/tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0}
        for q in range(QUARTILES):
            if means[f"q{q}_count"] > 0:  # ratio of rank means = ratio of global sums
                metrics[f"train/loss_t_q{q + 1}"] = means[f"q{q}_sum"] / means[f"q{q}_count"]
        return metrics


@dataclass
class Loop:
    """The loop's state between steps; `save`/`restore` carry what a resume needs (not the logging buffers)."""

    number: int  # the stage, 1-based
    config: DiTConfig
    ctx: Context
    out: str
    data: str  # the latent manifest
    run_hash: str
    parts: Parts
    loader: Any
    conditioning: Conditioning
    events: EventLog
    run: RankRun
    step: int = 0
    batches_drawn: int = 0  # batches taken from the loader, including skipped ones (the same on every rank)
    bucket_samples: dict[str, int] = field(default_factory=dict)  # global samples trained on, per bucket
    last_loss: float | None = None
    guard: Guard = field(init=False)
    interval: Interval = field(default_factory=Interval)
    iterator: Iterator[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        cfg = self.config.train
        self.guard = Guard(cfg.max_bad_steps, cfg.max_rollbacks)
        self.stage = cfg.stage(self.number)
        self.lr = cfg.lr(self.number)
        self.autocast = functools.partial(runtime.autocast, self.ctx.device,
                                          runtime.autocast_dtype(self.ctx.device, cfg.precision))

    def fit(self) -> None:
        cfg = self.config.train
        total = self.stage.steps
        # Step, loss, rate and ETA at a bounded rate, from one rank (each rank has its own log file too).
        progress = Progress(stage_name(self.number), total, initial=self.step, log=log) if self.ctx.is_main else None
        while self.step < total:
            started = time.perf_counter()
            index, batch = self.next_batch()
            try:
                result = train_step(self.parts, batch, self.conditioning, self.step, self.autocast)
            except BadStep as bad:
                on_bad_step(self, index, str(bad))
                continue
            self.guard.good_step()
            self.step += 1
            self.last_loss = result.loss
            name = "x".join(str(size) for size in batch["bucket"])
            global_samples = len(batch["key"]) * self.ctx.dp_size
            self.bucket_samples[name] = self.bucket_samples.get(name, 0) + global_samples
            self.interval.add(result, time.perf_counter() - started, global_samples * _tokens(batch, self.config),
                              self.config.diffusion.num_train_timesteps)
            if progress is not None:
                progress.update(self.step, loss=result.loss)
            if self.step % cfg.log_every == 0 or self.step == total:
                self.log_interval()
            if self.step % cfg.checkpoint_every == 0 and self.step < total:
                self.save()
        if progress is not None:
            progress.close()

    def log_interval(self) -> None:
        metrics = self.interval.metrics(self.ctx)
        metrics["train/lr"] = self.lr
        metrics |= {f"data/samples_{name}": float(count) for name, count in self.bucket_samples.items()}
        self.run.log_metrics(metrics, step=self.step)
        self.interval = Interval()

    def next_batch(self) -> tuple[int, dict[str, Any]]:
        """The next usable batch and its index in the loader's order; skipped batches are passed over."""
        return next_usable_batch(self, lambda: f"{self.data}: stage {self.number}'s buckets yield no global batch "
                                               f"on {self.ctx.dp_size} ranks")

    # ----------------------------------------------------------------------- checkpoints

    def tensors(self) -> dict[str, Any]:
        p = self.parts
        return {"model": checkpoint.ModelState(p.model), "ema": p.ema,
                "optimizer": checkpoint.OptimizerState(p.model, p.optimizer)}

    def save(self) -> str:
        shared = {"stage": self.number, "run_hash": self.run_hash, "mlflow_run_id": self.run.run_id,
                  "step": self.step, "loader": self.loader.state_dict(), "batches_drawn": self.batches_drawn,
                  "noise_rng": self.parts.noise.get_state(), "bucket_samples": dict(self.bucket_samples),
                  **self.guard.state_dict()}
        return checkpoint.save(self.out, self.step, self.ctx, self.tensors(), shared, {"rng": rng_state()},
                               self.config.train.keep_checkpoints)

    def restore(self, uri: str) -> None:
        loaded = checkpoint.load(uri, self.ctx, self.tensors())  # EMA on its own, never into the live model
        shared = loaded.shared
        assert shared["run_hash"] == self.run_hash, uri
        self.parts.noise.set_state(shared["noise_rng"])
        self.loader.load_state_dict(shared["loader"])
        self.iterator = None
        self.step, self.batches_drawn = shared["step"], shared["batches_drawn"]
        self.bucket_samples = dict(shared["bucket_samples"])
        self.guard.load_state_dict(shared)
        if loaded.saved_world_size == self.ctx.world_size:  # process RNGs only mean something on the same rank
            set_rng_state(loaded.ranks[self.ctx.rank]["rng"])


def _tokens(batch: dict[str, Any], config: DiTConfig) -> int:
    """DiT tokens of one sample of the batch: latent frames x rows x columns over the patch."""
    frames, rows, columns = config.model.token_grid(*batch["latent_mean"].shape[2:])
    return frames * rows * columns
