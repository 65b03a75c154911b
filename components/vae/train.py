"""`t2v vae train`: two-phase GAN training of the causal video VAE (reference notes §1.9-1.10).

setup (config, inputs, skip when finished, processes) -> build (model, discriminator, EMA, optimizers)
-> fit (the loop) -> finish (model folders, manifest). One process, or N under torchrun (DDP; every
rank trains on its slice of each global batch: see `train_step.py`); the kit is `components.core.training`.

Differences to the reference, on purpose:
- A discriminator step reuses the real clip and the (detached) reconstruction of the generator step just
  before it, so it runs no VAE forward and reads no data (the reference re-runs the VAE: §9.18).
- Resume restores live weights and EMA separately; only the phase-1 -> phase-2 handoff (`--init`) turns
  EMA weights into live weights (§9.11). The loader position is part of the checkpoint (§9.20).
- A non-finite loss or gradient skips the step; `max_bad_steps` in a row roll back to the last
  checkpoint and skip the offending batches (`core/training/guard.py`).
- bf16 autocast needs no GradScaler (§9.18); fp32 on CPU.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.core import distributed, manifest, media, model_folder, runtime, stage, storage, tracking
from components.core.distributed import Context
from components.core.host_memory import reuse_freed_memory
from components.core.training import checkpoint
from components.core.training.ema import EMA
from components.core.training.events import EventLog
from components.core.training.guard import BadStep, Guard
from components.core.training.rng import rng_state, set_rng_state
from components.core.training.run import RankRun, training_run
from components.vae import load_vae
from components.vae.config import VAEConfig, load_vae_config
from components.vae.discriminator import PatchDiscriminator3D
from components.vae.losses import VAELoss
from components.vae.model import CausalVAE
from components.vae.official import save_vae
from components.vae.train_inputs import STAGES, Handoff, open_loader, read_init, weights_hash
from components.vae.train_step import (
    Autoencoder,
    Parts,
    Pending,
    discriminator_step,
    fresh_pending,
    generator_step,
)

log = logging.getLogger(__name__)

REGISTERED_MODEL = "t2v-vae"


def train_vae(phase: int, data: str, out: str, init: str | None = None, preset: str = "tiny",
              overrides: Sequence[str] = (), parent_run_id: str | None = None) -> dict[str, Any]:
    """Train phase 1 or 2 into `out`; resume after a crash; do nothing when `out` is already finished.

    Phase 2 starts from the EMA weights of phase 1 (`init` = phase 1's output folder) with a fresh EMA and
    fresh optimizers; the phase-1 run id and manifest sha256 are recorded as lineage.
    """
    config = load_vae_config(preset, overrides)
    if phase not in STAGES:
        raise ValueError(f"--phase must be 1 or 2; got {phase}")
    if phase == 2 and init is None:
        raise ValueError("phase 2 starts from phase 1's EMA weights: pass --init <phase-1 output folder>")
    data_manifest = stage.manifest_uri(data)
    if not storage.exists(data_manifest):
        raise FileNotFoundError(f"--data: no shard manifest at {data_manifest}")
    ctx = distributed.setup(config.train.device, timeout_s=config.launch.timeout_s)
    try:
        return _setup_and_fit(phase, config, ctx, data_manifest, out, init, preset, parent_run_id)
    finally:
        distributed.teardown()


def _setup_and_fit(phase: int, config: VAEConfig, ctx: Context, data_manifest: str, out: str, init: str | None,
                   preset: str, parent_run_id: str | None) -> dict[str, Any]:
    inputs = {"data": stage.input_file(data_manifest)}
    handoff = read_init(init, phase) if init else None
    if handoff:
        inputs["init"] = handoff.input_entry
    run_hash = weights_hash(phase, config, ctx.dp_size)
    done = stage.finished(out, run_hash, inputs)
    if done:
        return _result(done, skipped=True)
    if ctx.distributed:
        local = storage.local_dir(out)
        distributed.log_to_rank_file(ctx, local / "logs" if local else tracking.t2v_home() / "logs" / STAGES[phase])
    parts = build(config, ctx, handoff)
    loader = open_loader(data_manifest, config, config.train.seed, ctx)
    events = EventLog(out, write=ctx.is_main)
    latest, damaged = checkpoint.latest_intact(out, ctx)
    for uri, reason in damaged:
        events.add("damaged_checkpoint", checkpoint=uri, reason=reason)
    shared = checkpoint.read_shared(latest[1]) if latest else None
    if shared is not None and shared["run_hash"] != run_hash:
        raise ValueError(f"{out} holds checkpoints of another configuration or phase ({latest[1]}); "
                         f"use a fresh --out or delete them")
    tags = {"stage": STAGES[phase], "phase": phase, "preset": preset, "processes": ctx.world_size,
            **(handoff.lineage if handoff else {})}
    params = {"phase": phase, "preset": preset, "data": data_manifest, "processes": ctx.world_size,
              "init": handoff.model_folder if handoff else None, **config.model_dump(mode="json")}
    resume_id = shared["mlflow_run_id"] if shared else None
    with training_run(ctx, STAGES[phase], resume_id, parent_run_id, tags, params) as run:
        fit_ = _Fit(phase, config, ctx, out, run_hash, parts, loader, events, run)
        if latest is not None:
            fit_.restore(latest[1])
            events.add("resume", from_checkpoint=latest[1])
        else:
            fit_.save()  # step 0: a rollback target even before the first interval
        started, start_step = time.perf_counter(), fit_.step
        # Every step reallocates the same tensors: keeping freed memory makes CPU steps ~1.3x faster.
        with reuse_freed_memory(enabled=ctx.device.type == "cpu"):
            fit_.fit()
        seconds = time.perf_counter() - started
        return _finish(fit_, preset, inputs, handoff, seconds, fit_.step - start_step)


def build(config: VAEConfig, ctx: Context, handoff: Handoff | None) -> Parts:
    """Model (phase-1 EMA weights on a handoff), discriminator, EMA, losses and optimizers on this rank."""
    cfg = config.train
    runtime.seed_everything(cfg.seed)  # the same seed on every rank: the weights start equal
    model = CausalVAE(config.model).to(ctx.device)
    if handoff:  # live weights := phase-1 EMA weights; EMA and optimizers start fresh
        model_folder.load_weights(model, load_vae(handoff.model_folder).state_dict(), handoff.model_folder)
    discriminator = PatchDiscriminator3D(config.model.in_channels, cfg.discriminator.base_channels,
                                         cfg.discriminator.num_layers).to(ctx.device)
    distributed.sync_batch_norm(discriminator, ctx)
    if handoff and handoff.discriminator_checkpoint:
        checkpoint.load(handoff.discriminator_checkpoint, ctx, {"discriminator": checkpoint.ModelState(discriminator)})
    return Parts(
        model=model, discriminator=discriminator,
        autoencoder=distributed.wrap(Autoencoder(model), ctx, "ddp"),
        critic=distributed.wrap(discriminator, ctx, "ddp"),
        ema=EMA(model, cfg.ema_decay),
        loss=VAELoss(cfg.loss, lpips_seed=cfg.seed,
                     average=functools.partial(distributed.mean_tensor, ctx=ctx)).to(ctx.device),
        gen_optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas),
        disc_optimizer=torch.optim.Adam(discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.betas),
        noise=torch.Generator(device=ctx.device).manual_seed(cfg.seed),
        sample_posterior=cfg.sample_posterior, ctx=ctx,
    )


@dataclass
class _Fit:
    """The loop's state between steps; all of it is in the checkpoint."""

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
                self.on_bad_step(batch, str(bad))
                continue
            self.guard.good_step()
            self.step += 1
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

    def next_batch(self) -> tuple[int, torch.Tensor]:
        """The next usable batch's index and this rank's video (b, 3, T, H, W); skips and test hooks here."""
        while True:
            if self.iterator is None:
                self.iterator = iter(self.loader)
            batch = next(self.iterator, None)
            if batch is None:  # end of an epoch: the loader's next iteration is the next epoch
                self.iterator = iter(self.loader)
                batch = next(self.iterator, None)
                if batch is None:
                    raise ValueError(f"{self.loader.manifest_uri}: bucket {self.config.data.bucket} yields no "
                                     f"global batch of {self.config.data.batch_size} x {self.ctx.dp_size} clips")
            index = self.batches_drawn
            self.batches_drawn += 1
            if index in self.guard.skip_batches:
                self.events.add("skip_batch", batch=index)
                continue
            video = batch["video"].to(self.ctx.device, non_blocking=True)  # (b, 3, T, H, W) in [-1, 1]
            if index in self.config.train.inject_nan_batches:
                video = torch.full_like(video, float("nan"))  # test hook for the instability guard
            return index, video

    def on_bad_step(self, batch: int, reason: str) -> None:
        self.events.add("bad_step", step=self.step, batch=batch, reason=reason)
        self.run.log_metrics({"guard/bad_steps": self.events.count("bad_step")}, step=self.step)
        if not self.guard.bad_step(batch, self.step, self.events.uri):
            return
        latest, _ = checkpoint.latest_intact(self.out, self.ctx)
        offending = self.guard.rolled_back()
        self.restore(latest[1])
        self.events.add("rollback", to_step=latest[0], checkpoint=latest[1], skip_batches=offending)
        self.run.log_metrics({"guard/rollbacks": self.guard.rollbacks}, step=self.step)
        self.run.set_tags({"guard.rollbacks": self.guard.rollbacks, "guard.skip_batches": self.guard.skip_batches})

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


def _finish(fit_: _Fit, preset: str, inputs: dict[str, dict[str, str]], handoff: Handoff | None,
            seconds: float, steps_this_run: int) -> dict[str, Any]:
    """Final checkpoint, then rank 0 exports model folders (EMA in model/, live in model_raw/) and the manifest."""
    ctx, parts, out = fit_.ctx, fit_.parts, fit_.out
    final_uri = fit_.save()
    weights = {"model": checkpoint.full_weights(parts.model, parts.ema), "model_raw": checkpoint.full_weights(parts.model)}
    final_losses = distributed.mean_over_ranks(fit_.last_terms, ctx)
    result = None
    if ctx.is_main:
        metrics = {"steps": fit_.step, "final_losses": final_losses, "seconds_this_run": seconds,
                   "steps_per_second": steps_this_run / seconds if seconds > 0 else None, "processes": ctx.world_size,
                   "bad_steps": fit_.events.count("bad_step"), "rollbacks": fit_.guard.rollbacks,
                   "skip_batches": fit_.guard.skip_batches, "resumes": fit_.events.count("resume")}
        metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        files: dict[str, dict[str, Any]] = {}
        with storage.staging_dir("t2v-vae-model-") as tmp:
            for name, state in weights.items():
                module = copy.deepcopy(parts.model).cpu()
                module.load_state_dict(state)
                save_vae(Path(tmp) / name, module)
            files.update(stage.upload_folder(Path(tmp), out))
            fit_.run.log_artifact(Path(tmp) / "model", "model")
        storage.write_json(storage.join(out, "metrics.json"), metrics)
        final_name = storage.relative_to(final_uri, out)
        for name in ("metrics.json", fit_.events.uri.rsplit("/", 1)[-1], f"{final_name}/{checkpoint.INDEX_FILE}"):
            if storage.exists(storage.join(out, name)):
                files[name] = stage.file_entry(storage.join(out, name))
        fit_.run.log_metrics({"final/steps": fit_.step}, step=fit_.step)
        fit_.run.log_dict(metrics, "metrics.json")
        lineage = handoff.lineage if handoff else {}
        registered = None
        if fit_.phase == 2:
            registered = tracking.register_model(REGISTERED_MODEL, fit_.run.run, "model", tags={"stage": STAGES[2], **lineage})
        result = manifest.build_manifest(
            stage=STAGES[fit_.phase], preset=preset, config=fit_.config.model_dump(mode="json"),
            config_hash=fit_.run_hash, inputs=inputs, files=files, mlflow_run_id=fit_.run.run_id,
            out=str(out), model=storage.join(out, "model"), steps=fit_.step, phase=fit_.phase,
            final_checkpoint=final_name, lineage=lineage, metrics=metrics, processes=ctx.world_size,
            registered_model={"name": REGISTERED_MODEL, "version": registered} if registered else None,
        )
        stage.publish(out, result)
    return _result(distributed.broadcast_object(result, ctx), skipped=False)


def _result(finished: dict[str, Any], skipped: bool) -> dict[str, Any]:
    return {"out": finished["out"], "model": finished["model"], "stage": finished["stage"],
            "steps": finished["steps"], "mlflow_run_id": finished["mlflow_run_id"],
            "metrics": finished["metrics"], "skipped": skipped}
