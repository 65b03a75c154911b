"""The VAE training loop (`fit`) and its state between steps (what a resume needs is in the checkpoint)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.core import distributed, media, runtime, storage
from components.core.distributed import Context
from components.core.progress import Progress
from components.core.training import checkpoint
from components.core.training.events import EventLog
from components.core.training.guard import BadStep, Guard, next_usable_batch, on_bad_step
from components.core.training.rng import rng_state, set_rng_state
from components.core.training.run import RankRun
from components.vae.config import VAEConfig
from components.vae.train_inputs import STAGES, crop
from components.vae.train_step import Parts, Pending, discriminator_step, fresh_pending, generator_step

log = logging.getLogger(__name__)


@dataclass
class Loop:
    """The loop's state between steps; `save`/`restore` carry what a resume needs (not the logging buffers)."""

    phase: int
    config: VAEConfig
    ctx: Context
    out: str
    run_hash: str
    parts: Parts
    loader: Any
    events: EventLog
    run: RankRun
    step: int = 0
    batches_drawn: int = 0  # batches taken from the loader, including skipped ones (the same on every rank)
    pending: Pending | None = None
    guard: Guard = field(init=False)
    last_terms: dict[str, float] = field(default_factory=dict)
    interval: dict[str, tuple[float, int]] = field(default_factory=dict)  # (sum, count) since the last log
    last_reconstruction: tuple[torch.Tensor, torch.Tensor] | None = None
    iterator: Iterator[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.guard = Guard(self.config.train.max_bad_steps, self.config.train.max_rollbacks)
        self.total_steps = (self.config.train.phase1 if self.phase == 1 else self.config.train.phase2).steps
        self.autocast = functools.partial(runtime.autocast, self.ctx.device,
                                          runtime.autocast_dtype(self.ctx.device, self.config.train.precision))

    def fit(self) -> None:
        cfg = self.config.train
        # Step, loss, rate and ETA at a bounded rate, from one rank (each rank has its own log file too).
        progress = Progress(STAGES[self.phase], self.total_steps, initial=self.step, log=log) if self.ctx.is_main else None
        while self.step < self.total_steps:
            use_gan = self.step >= cfg.disc_start
            try:
                if not use_gan or (self.step - cfg.disc_start) % 2 == 0:
                    batch, video = self.next_batch()
                    terms, self.pending, recon = generator_step(self.parts, batch, video, use_gan, self.autocast)
                    self.last_reconstruction = (video, recon)
                else:
                    if self.pending is None:  # e.g. the previous discriminator step was skipped
                        self.pending = fresh_pending(self.parts, *self.next_batch(), self.autocast)
                    batch, pending, self.pending = self.pending.batch_index, self.pending, None
                    terms = discriminator_step(self.parts, pending, self.autocast)
            except BadStep as bad:
                on_bad_step(self, batch, str(bad))
                continue
            self.guard.good_step()
            self.step += 1
            if progress is not None:
                progress.update(self.step, loss=terms.get("gen", terms.get("disc")))
            self.last_terms.update(terms)
            for name, value in terms.items():
                total, count = self.interval.get(name, (0.0, 0))
                self.interval[name] = (total + value, count + 1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                # Means over the interval's steps (generator terms over generator steps...) and the ranks.
                means = distributed.mean_over_ranks({f"train/{n}": t / c for n, (t, c) in self.interval.items()}, self.ctx)
                self.run.log_metrics({**means, "train/lr": cfg.lr, "train/disc_lr": cfg.disc_lr}, step=self.step)
                self.interval = {}
            if self.step % cfg.sample_every == 0 and self.last_reconstruction is not None and self.ctx.is_main:
                self.log_samples(*self.last_reconstruction)
            if self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                self.save()
        if progress is not None:
            progress.close()

    def next_batch(self) -> tuple[int, torch.Tensor]:
        """The next usable batch's index and this rank's video (b, 3, T, H, W); the NaN test hook here."""
        index, batch = next_usable_batch(self, lambda: f"{self.loader.manifest_uri}: bucket {self.config.data.bucket} "
                                         f"yields no global batch of {self.config.data.batch_size} x {self.ctx.dp_size} clips")
        video = batch["video"]  # (b, 3, T, H, W) in [-1, 1]
        if self.config.data.crop_larger:
            video = crop(video, batch["key"], self.config, index)  # (b, 3, F, H', W') of data.bucket
        video = video.to(self.ctx.device, non_blocking=True)
        if index in self.config.train.inject_nan_batches:
            video = torch.full_like(video, float("nan"))  # test hook for the instability guard
        return index, video

    # ----------------------------------------------------------------------- checkpoints

    def tensors(self) -> dict[str, Any]:
        p = self.parts
        return {"generator": checkpoint.ModelState(p.model), "discriminator": checkpoint.ModelState(p.discriminator),
                "ema": p.ema, "gen_optimizer": checkpoint.OptimizerState(p.model, p.gen_optimizer),
                "disc_optimizer": checkpoint.OptimizerState(p.discriminator, p.disc_optimizer)}

    def save(self) -> str:
        shared = {"phase": self.phase, "run_hash": self.run_hash, "mlflow_run_id": self.run.run_id,
                  "step": self.step, "loader": self.loader.state_dict(), "batches_drawn": self.batches_drawn,
                  "noise_rng": self.parts.noise.get_state(), **self.guard.state_dict()}
        pending = None if self.pending is None else {
            "batch_index": self.pending.batch_index, "real": self.pending.real, "fake": self.pending.fake}
        return checkpoint.save(self.out, self.step, self.ctx, self.tensors(), shared,
                               {"rng": rng_state(), "pending": pending}, self.config.train.keep_checkpoints)

    def restore(self, uri: str) -> None:
        loaded = checkpoint.load(uri, self.ctx, self.tensors())  # EMA on its own, never into the live model (§9.11)
        shared = loaded.shared
        assert shared["run_hash"] == self.run_hash, uri
        self.parts.noise.set_state(shared["noise_rng"])
        self.loader.load_state_dict(shared["loader"])
        self.iterator = None
        self.step, self.batches_drawn = shared["step"], shared["batches_drawn"]
        self.guard.load_state_dict(shared)
        ranks = [loaded.ranks[r] for r in sorted(loaded.ranks)]
        if loaded.saved_world_size == self.ctx.world_size:  # process RNGs only mean something on the same rank
            set_rng_state(ranks[0]["rng"])
        self.pending = _reslice(ranks, self.ctx)

    # ----------------------------------------------------------------------- media

    def log_samples(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        with storage.staging_dir("t2v-vae-samples-") as tmp:
            media.save_reconstruction_grid(real[:2], fake[:2], Path(tmp) / f"recon-step-{self.step}.png")
            media.save_side_by_side_video(real[:2], fake[:2], Path(tmp) / f"recon-step-{self.step}.mp4")
            self.run.log_artifact(tmp, "samples")


def _reslice(ranks: list[dict[str, Any]], ctx: Context) -> Pending | None:
    """This rank's part of the saved pending pair; the global batch is re-split when the world size changed."""
    saved = [state["pending"] for state in ranks]
    if saved[0] is None:
        return None
    real, fake = torch.cat([p["real"] for p in saved]), torch.cat([p["fake"] for p in saved])  # (B, 3, T, H, W)
    size = real.shape[0] // ctx.dp_size if len(saved) > 1 else real.shape[0]
    rows = slice(ctx.dp_rank * size, (ctx.dp_rank + 1) * size) if len(saved) > 1 else slice(None)
    return Pending(saved[0]["batch_index"], real[rows].to(ctx.device), fake[rows].to(ctx.device))
