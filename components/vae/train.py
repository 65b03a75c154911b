"""`t2v vae train`: two-phase GAN training of the causal video VAE (reference notes §1.9-1.10).

setup (config, inputs, resume or skip) -> build (model, discriminator, EMA, optimizers, loader) -> fit.

Differences to the reference, on purpose:
- A discriminator step reuses the real clip and the (detached) reconstruction of the generator step just
  before it, so it runs no VAE forward and reads no data (the reference re-runs the VAE: §9.18).
- Resume restores live weights and EMA separately; only the phase-1 -> phase-2 handoff (`--init`) turns
  EMA weights into live weights (§9.11). The loader position is part of the checkpoint (§9.20).
- A non-finite loss or gradient skips the step; `max_bad_steps` in a row roll back to the last
  checkpoint and skip the offending batches.
- bf16 autocast needs no GradScaler (§9.18); fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.core import checkpoints, manifest, runtime, storage, tracking
from components.core.config import config_hash
from components.core.host_memory import reuse_freed_memory
from components.core.progress import Progress
from components.vae import load_vae, trainer_state
from components.vae.config import VAEConfig, load_vae_config
from components.vae.discriminator import PatchDiscriminator3D
from components.vae.ema import EMA
from components.vae.losses import VAELoss
from components.vae.model import CausalVAE
from components.vae.official import save_vae

log = logging.getLogger(__name__)

STAGES = {1: "vae-phase1", 2: "vae-phase2"}
REGISTERED_MODEL = "t2v-vae"
LAST_LAYER = "decoder.conv_out.conv.weight"  # the adaptive GAN weight's reference layer (§1.9)


# --------------------------------------------------------------------------- public entry point


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
    data_manifest = _manifest_uri(data)
    if not storage.exists(data_manifest):
        raise FileNotFoundError(f"--data: no shard manifest at {data_manifest}")
    inputs = {"data": {"uri": data_manifest, "sha256": storage.sha256_bytes(storage.read_bytes(data_manifest))}}
    handoff = _read_init(init, phase) if init else None
    if handoff:
        inputs["init"] = handoff.input_entry
    run_hash = hashlib.sha256(f"phase={phase};{config_hash(config)}".encode()).hexdigest()
    finished = manifest.is_complete(out, run_hash, inputs)
    if finished:
        log.info("%s is already finished with these inputs and configuration: nothing to do", out)
        return _result(finished, skipped=True)
    trainer = _Trainer(phase, config, preset, out, data_manifest, inputs, run_hash, handoff)
    return trainer.run(parent_run_id)


# --------------------------------------------------------------------------- inputs


@dataclass
class _Handoff:
    """Where the generator starts: a phase-1 output (EMA weights + discriminator) or a plain model folder."""

    model_folder: str
    input_entry: dict[str, str]
    lineage: dict[str, str] = field(default_factory=dict)
    discriminator_checkpoint: str | None = None


def _manifest_uri(uri: str) -> str:
    return uri if uri.endswith(".json") else storage.join(uri, manifest.MANIFEST_FILE)


def _read_init(init: str, phase: int) -> _Handoff:
    """Phase 2 needs a finished phase-1 output; phase 1 may start from any VAE model folder (tail init)."""
    init_manifest = manifest.read_manifest(init)
    if init_manifest is not None and init_manifest.get("stage") == STAGES[1]:
        manifest_uri = _manifest_uri(init)
        sha = storage.sha256_bytes(storage.read_bytes(manifest_uri))
        final = init_manifest["final_checkpoint"]
        return _Handoff(
            model_folder=storage.join(init, "model"),
            input_entry={"uri": manifest_uri, "sha256": sha},
            lineage={"lineage.phase1_run_id": str(init_manifest.get("mlflow_run_id")),
                     "lineage.phase1_manifest_sha256": sha, "lineage.phase1_uri": str(init)},
            discriminator_checkpoint=storage.join(init, final),
        )
    if phase == 2:
        raise ValueError(f"--init {init}: phase 2 needs a finished phase-1 output folder (manifest.json with "
                         f"stage '{STAGES[1]}'); found {'no manifest' if init_manifest is None else init_manifest.get('stage')}")
    files = storage.list_files(init)
    if not any(uri.endswith("/" + checkpoints.CONFIG_FILE) for uri in files):
        raise FileNotFoundError(f"--init {init}: neither a phase-1 output nor a VAE model folder (no config.json)")
    # One checksum over the folder's files, so a changed init is a changed input.
    digest = hashlib.sha256("".join(f"{storage.relative_to(uri, str(init))}:{storage.sha256_bytes(storage.read_bytes(uri))};"
                                    for uri in files).encode()).hexdigest()
    return _Handoff(model_folder=str(init), input_entry={"uri": str(init), "sha256": digest},
                    lineage={"lineage.init_model": str(init)})


def _result(finished: dict[str, Any], skipped: bool) -> dict[str, Any]:
    return {"out": finished["out"], "model": finished["model"], "stage": finished["stage"],
            "steps": finished["steps"], "mlflow_run_id": finished["mlflow_run_id"],
            "metrics": finished["metrics"], "skipped": skipped}


def _open_loader(data_manifest: str, config: VAEConfig, seed: int):
    """The data component's loader over one video bucket (reference notes §1.10: 25×256×256 for v1.2)."""
    from components.data.loader import BucketLoader, LoaderConfig  # the data component's public read API

    data = config.data
    loader_config = LoaderConfig(buckets=[data.bucket], batch_size_overrides={data.bucket: data.batch_size},
                                 seed=seed, shuffle_shards=data.shuffle_shards, num_workers=data.num_workers,
                                 min_frames=2)
    return BucketLoader(data_manifest, loader_config, rank=0, world_size=1)


# --------------------------------------------------------------------------- the trainer


class _BadStep(Exception):
    """A non-finite loss or gradient; the step is skipped."""


@dataclass
class _Pending:
    """The last generator step's clip and reconstruction, for the discriminator step that follows."""

    batch_index: int
    real: torch.Tensor
    fake: torch.Tensor


class _Trainer:
    def __init__(self, phase: int, config: VAEConfig, preset: str, out: str, data_manifest: str,
                 inputs: dict[str, dict[str, str]], run_hash: str, handoff: _Handoff | None):
        self.phase, self.config, self.preset, self.out = phase, config, preset, out
        self.train_cfg = config.train
        self.total_steps = (config.train.phase1 if phase == 1 else config.train.phase2).steps
        self.data_manifest, self.inputs, self.run_hash, self.handoff = data_manifest, inputs, run_hash, handoff
        self.device = runtime.select_device(config.train.device)
        self.amp_dtype = runtime.autocast_dtype(self.device, config.train.precision)
        self.events = trainer_state.EventLog(out)
        self._build()

    # ----------------------------------------------------------------------- build

    def _build(self) -> None:
        cfg = self.train_cfg
        runtime.seed_everything(cfg.seed)
        self.model = CausalVAE(self.config.model).to(self.device)
        if self.handoff:
            # Handoff (phase 2): live weights := phase-1 EMA weights; EMA and optimizers start fresh.
            weights = load_vae(self.handoff.model_folder).state_dict()
            _load_strict(self.model, weights, self.handoff.model_folder)
        self.discriminator = PatchDiscriminator3D(self.config.model.in_channels, cfg.discriminator.base_channels,
                                                  cfg.discriminator.num_layers).to(self.device)
        if self.handoff and self.handoff.discriminator_checkpoint:
            state = trainer_state.load_checkpoint(self.handoff.discriminator_checkpoint)
            _load_strict(self.discriminator, state["discriminator"], self.handoff.discriminator_checkpoint)
        self.loss = VAELoss(cfg.loss, lpips_seed=cfg.seed).to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.gen_optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.betas)
        self.last_layer = dict(self.model.named_parameters())[LAST_LAYER]
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed)  # posterior samples
        self.loader = _open_loader(self.data_manifest, self.config, cfg.seed)
        self._iterator: Iterator[dict[str, Any]] | None = None
        self.step = 0
        self.batches_drawn = 0  # batches taken from the loader, including skipped ones
        self.skip_batches: list[int] = []  # batch indices that caused bad steps (skipped after a rollback)
        self.pending: _Pending | None = None
        self.bad_streak: list[int] = []  # batch indices of the current run of bad steps
        self.rollbacks = 0
        self.last_terms: dict[str, float] = {}
        self.interval_terms: dict[str, tuple[float, int]] = {}  # (sum, count) since the last logged step
        self.last_reconstruction: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------- checkpoint state

    def _state(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "run_hash": self.run_hash, "mlflow_run_id": self.run.run_id,
            "generator": self.model.state_dict(), "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(), "gen_optimizer": self.gen_optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict(), "rng": checkpoints.rng_state(),
            "noise_rng": self.noise.get_state(), "loader": self.loader.state_dict(),
            "batches_drawn": self.batches_drawn, "skip_batches": list(self.skip_batches),
            "pending": None if self.pending is None else {
                "batch_index": self.pending.batch_index, "real": self.pending.real, "fake": self.pending.fake},
            "rollbacks": self.rollbacks,
        }

    def _restore(self, state: dict[str, Any], uri: str) -> None:
        assert state["run_hash"] == self.run_hash, uri
        self.model.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.load_state_dict(state["ema"])  # EMA restored on its own, never into the live model (§9.11)
        self.gen_optimizer.load_state_dict(state["gen_optimizer"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        checkpoints.set_rng_state(state["rng"])
        self.noise.set_state(state["noise_rng"])
        self.loader.load_state_dict(state["loader"])
        self._iterator = None
        self.step, self.batches_drawn = state["step"], state["batches_drawn"]
        self.skip_batches = sorted(set(self.skip_batches) | set(state["skip_batches"]))
        pending = state["pending"]
        self.pending = None if pending is None else _Pending(
            pending["batch_index"], pending["real"].to(self.device), pending["fake"].to(self.device))
        self.rollbacks = max(self.rollbacks, state["rollbacks"])

    def _save_checkpoint(self) -> None:
        trainer_state.save_checkpoint(self.out, self.step, self._state(), self.train_cfg.keep_checkpoints)

    # ----------------------------------------------------------------------- run

    def run(self, parent_run_id: str | None) -> dict[str, Any]:
        latest = trainer_state.latest_checkpoint(self.out)
        resume_state = trainer_state.load_checkpoint(latest[1]) if latest else None
        if resume_state is not None and resume_state["run_hash"] != self.run_hash:
            raise ValueError(f"{self.out} holds checkpoints of another configuration or phase ({latest[1]}); "
                             f"use a fresh --out or delete them")
        with self._open_run(resume_state, parent_run_id):
            if resume_state is not None:
                self._restore(resume_state, latest[1])
                self._event("resume", from_checkpoint=latest[1])
                log.info("resuming %s from %s", self.out, latest[1])
            else:
                self._save_checkpoint()  # step 0: a rollback target even before the first interval
            started = time.perf_counter()
            start_step = self.step
            # Every step reallocates the same tensors: keeping freed memory makes CPU steps ~1.3x faster.
            with reuse_freed_memory(enabled=self.device.type == "cpu"):
                self._fit()
            seconds = time.perf_counter() - started
            return self._finish(seconds, self.step - start_step)

    @contextlib.contextmanager
    def _open_run(self, resume_state: dict[str, Any] | None, parent_run_id: str | None):
        """The stage's MLflow run; a resumed training continues the interrupted run's id."""
        tags = {"stage": STAGES[self.phase], "phase": self.phase, "preset": self.preset,
                **(self.handoff.lineage if self.handoff else {})}
        if resume_state is not None:
            run_id = resume_state["mlflow_run_id"]
            self.run = tracking.Run(run_id, tracking.get_run(run_id)["experiment_id"])
            self.run.reopen()  # a pipeline rerun may have marked it KILLED meanwhile
            self.run.set_tags({"resumed": "true"})
        else:
            self.run = tracking.start_run(STAGES[self.phase], parent_run_id=parent_run_id, tags=tags)
            self.run.log_params({"phase": self.phase, "preset": self.preset, "data": self.data_manifest,
                                 "init": self.handoff.model_folder if self.handoff else None,
                                 **self.config.model_dump(mode="json")})
        try:
            yield self.run
        except BaseException:
            self.run.finish("FAILED")
            raise
        self.run.finish("FINISHED")

    def _fit(self) -> None:
        cfg = self.train_cfg
        progress = Progress(STAGES[self.phase], self.total_steps, initial=self.step, log=log)
        while self.step < self.total_steps:
            use_gan = self.step >= cfg.disc_start
            generator_turn = not use_gan or (self.step - cfg.disc_start) % 2 == 0
            try:
                terms = self._generator_step(use_gan) if generator_turn else self._discriminator_step()
            except _BadStep as bad:
                self._on_bad_step(str(bad))
                continue
            self.bad_streak = []
            self.step += 1
            progress.update(self.step, loss=terms.get("gen", terms.get("disc")))
            self.last_terms.update(terms)
            for name, value in terms.items():
                total, count = self.interval_terms.get(name, (0.0, 0))
                self.interval_terms[name] = (total + value, count + 1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                # Means over the interval's steps (generator terms over generator steps, and so on).
                means = {f"train/{name}": total / count for name, (total, count) in self.interval_terms.items()}
                self.run.log_metrics({**means, "train/lr": cfg.lr, "train/disc_lr": cfg.disc_lr}, step=self.step)
                self.interval_terms = {}
            if self.step % cfg.sample_every == 0 and self.last_reconstruction is not None:
                self._log_samples(*self.last_reconstruction)
            if self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                self._save_checkpoint()

    # ----------------------------------------------------------------------- steps

    def _next_batch(self) -> tuple[int, torch.Tensor]:
        """The next usable batch's index and video (B, 3, T, H, W); skipped and injected batches handled here."""
        while True:
            if self._iterator is None:
                self._iterator = iter(self.loader)
            batch = next(self._iterator, None)
            if batch is None:  # end of an epoch: the loader's next iteration is the next epoch
                self._iterator = iter(self.loader)
                batch = next(self._iterator, None)
                if batch is None:
                    raise ValueError(f"{self.data_manifest}: bucket {self.config.data.bucket} yields no batch "
                                     f"of {self.config.data.batch_size} clips")
            index = self.batches_drawn
            self.batches_drawn += 1
            if index in self.skip_batches:
                self._event("skip_batch", batch=index)
                continue
            video = batch["video"].to(self.device, non_blocking=True)  # (B, 3, T, H, W) in [-1, 1]
            if index in self.train_cfg.inject_nan_batches:
                video = torch.full_like(video, float("nan"))  # test hook for the instability guard
            return index, video

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _generator_step(self, use_gan: bool) -> dict[str, float]:
        index, video = self._next_batch()
        self.current_batch = index
        self.model.train()
        self.discriminator.requires_grad_(False)  # its gradients are not needed on a generator step
        try:
            with self._autocast():
                posterior = self.model.encode(video)  # over (B, C, t, h, w)
                latents = posterior.sample(self.noise) if self.train_cfg.sample_posterior else posterior.mode()
                recon = self.model.decode(latents)  # (B, 3, T, H, W)
                terms = self.loss.generator(recon, video, posterior, self.discriminator, self.last_layer, use_gan)
            self._apply(terms["gen"], self.gen_optimizer, self.model)
        finally:
            self.discriminator.requires_grad_(True)
        self.ema.update(self.model)
        self.pending = _Pending(index, video.detach(), recon.detach()) if use_gan else None
        self.last_reconstruction = (video.detach(), recon.detach())  # for the sample grid and video
        return {k: float(v.detach()) for k, v in terms.items()}

    def _discriminator_step(self) -> dict[str, float]:
        if self.pending is None:  # e.g. the previous discriminator step was skipped: make a fresh pair
            index, video = self._next_batch()
            with torch.no_grad(), self._autocast():
                recon = self.model.decode(self.model.encode(video).sample(self.noise))  # (B, 3, T, H, W)
            self.pending = _Pending(index, video, recon)
        pending, self.pending = self.pending, None
        self.current_batch = pending.batch_index
        self.discriminator.train()
        with self._autocast():
            terms = self.loss.discriminator(self.discriminator, pending.real, pending.fake)
        self._apply(terms["disc"], self.disc_optimizer, self.discriminator)
        return {k: float(v.detach()) for k, v in terms.items()}

    @staticmethod
    def _apply(loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> None:
        """Backward and update, unless the loss or any gradient is non-finite (then nothing changes)."""
        if not torch.isfinite(loss):
            raise _BadStep(f"non-finite loss {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            raise _BadStep(f"non-finite gradient norm {grad_norm.item()}")
        optimizer.step()

    # ----------------------------------------------------------------------- instability guard

    def _on_bad_step(self, reason: str) -> None:
        self.bad_streak.append(self.current_batch)
        self._event("bad_step", step=self.step, batch=self.current_batch, reason=reason)
        self.run.log_metrics({"guard/bad_steps": self.events.count("bad_step")}, step=self.step)
        if len(self.bad_streak) < self.train_cfg.max_bad_steps:
            return
        if self.rollbacks >= self.train_cfg.max_rollbacks:
            raise RuntimeError(f"{len(self.bad_streak)} bad steps in a row at step {self.step} after "
                               f"{self.rollbacks} rollbacks; see {self.events.uri}")
        step, uri = trainer_state.latest_checkpoint(self.out)
        offending = sorted(set(self.bad_streak))
        self.skip_batches = sorted(set(self.skip_batches) | set(offending))
        self._restore(trainer_state.load_checkpoint(uri), uri)
        self.rollbacks += 1
        self.bad_streak = []
        self._event("rollback", to_step=step, checkpoint=uri, skip_batches=offending)
        self.run.log_metrics({"guard/rollbacks": self.rollbacks}, step=self.step)
        self.run.set_tags({"guard.rollbacks": self.rollbacks, "guard.skip_batches": self.skip_batches})

    def _event(self, kind: str, **fields: Any) -> None:
        event = self.events.add(kind, **fields)
        log.warning("event %s", event) if kind != "resume" else log.info("event %s", event)

    # ----------------------------------------------------------------------- media

    def _log_samples(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        from components.eval.media import save_reconstruction_grid, save_side_by_side_video

        with storage.staging_dir("t2v-vae-samples-") as tmp:
            save_reconstruction_grid(real[:2], fake[:2], Path(tmp) / f"recon-step-{self.step}.png")
            save_side_by_side_video(real[:2], fake[:2], Path(tmp) / f"recon-step-{self.step}.mp4")
            self.run.log_artifact(tmp, "samples")

    # ----------------------------------------------------------------------- finish

    def _finish(self, seconds: float, steps_this_run: int) -> dict[str, Any]:
        final_uri, _ = trainer_state.save_checkpoint(self.out, self.step, self._state(),
                                                     self.train_cfg.keep_checkpoints)
        files: dict[str, dict[str, Any]] = {}
        with storage.staging_dir("t2v-vae-model-") as tmp:
            # model/ holds the EMA weights (what later stages use), model_raw/ the live ones.
            ema_model = copy.deepcopy(self.model).cpu()
            ema_model.load_state_dict(self.ema.model_state_dict(self.model))
            for name, module in (("model", ema_model), ("model_raw", self.model)):
                local = Path(tmp) / name
                save_vae(local, module)
                for path in sorted(local.iterdir()):
                    uri = storage.join(self.out, name, path.name)
                    files[f"{name}/{path.name}"] = manifest.file_entry(uri, storage.put_file(path, uri),
                                                                       path.stat().st_size)
            self.run.log_artifact(Path(tmp) / "model", "model")
        metrics = {
            "steps": self.step, "final_losses": self.last_terms,
            "seconds_this_run": seconds, "steps_per_second": steps_this_run / seconds if seconds > 0 else None,
            "bad_steps": self.events.count("bad_step"), "rollbacks": self.rollbacks,
            "skip_batches": self.skip_batches, "resumes": self.events.count("resume"),
        }
        metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        for name, uri, payload in (("metrics.json", storage.join(self.out, "metrics.json"), metrics),):
            sha = storage.write_json(uri, payload)
            files[name] = manifest.file_entry(uri, sha, len(storage.read_bytes(uri)))
        for name in ("events.jsonl",):
            uri = storage.join(self.out, name)
            if storage.exists(uri):
                data = storage.read_bytes(uri)
                files[name] = manifest.file_entry(uri, storage.sha256_bytes(data), len(data))
        final_name = storage.relative_to(final_uri, self.out)
        data = storage.read_bytes(final_uri)
        files[final_name] = manifest.file_entry(final_uri, storage.sha256_bytes(data), len(data))
        self.run.log_metrics({"final/steps": self.step}, step=self.step)
        self.run.log_dict(metrics, "metrics.json")
        lineage = self.handoff.lineage if self.handoff else {}
        registered = None
        if self.phase == 2:
            registered = tracking.register_model(REGISTERED_MODEL, self.run, "model",
                                                 tags={"stage": STAGES[2], **lineage})
        result_manifest = manifest.build_manifest(
            stage=STAGES[self.phase], preset=self.preset, config=self.config.model_dump(mode="json"),
            config_hash=self.run_hash, inputs=self.inputs, files=files, mlflow_run_id=self.run.run_id,
            out=str(self.out), model=storage.join(self.out, "model"), steps=self.step, phase=self.phase,
            final_checkpoint=final_name, lineage=lineage, metrics=metrics,
            registered_model={"name": REGISTERED_MODEL, "version": registered} if registered else None,
        )
        manifest.write_manifest(self.out, result_manifest)
        return _result(result_manifest, skipped=False)


def _load_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = set(module.state_dict()) - set(weights), set(weights) - set(module.state_dict())
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the configured model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}); check the preset's model group")
    wrong = [k for k, v in weights.items() if v.shape != module.state_dict()[k].shape]
    if wrong:
        raise ValueError(f"{source}: weights have other shapes than the configured model: {wrong[:5]}")
    module.load_state_dict(weights)
