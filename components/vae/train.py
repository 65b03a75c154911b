"""`t2v vae train`: two-phase GAN training of the causal video VAE (reference notes §1.9-1.10).

setup (config, inputs, skip when finished, processes: here) -> build (model, discriminator, EMA,
optimizers: here) -> fit (`train_loop.py`, steps in `train_step.py`) -> finish (`train_export.py`).
One process, or N under torchrun (DDP; every rank trains on its slice of each global batch: see
`train_step.py`). The pieces every trainer shares are the kit in `components.core.training`.

Differences to the reference, on purpose:
- A discriminator step reuses the real clip and the (detached) reconstruction of the generator step just
  before it, so it runs no VAE forward and reads no data (the reference re-runs the VAE: §9.18).
- Resume restores live weights and EMA separately; only the phase-1 -> phase-2 handoff (`--init`) turns
  EMA weights into live weights (§9.11). The loader position is part of the checkpoint (§9.20).
- When phase 1 trained on images, the handoff puts each causal kernel's sum over time on the current
  frame (`tail_init.image_kernels_to_tail`): same function on images, no lag on video.
- A non-finite loss or gradient skips the step; `max_bad_steps` in a row roll back to the last
  checkpoint and skip the offending batches (`core/training/guard.py`).
- bf16 autocast needs no GradScaler (§9.18); fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from typing import Any

import torch

from components.core import (
    distributed,
    lease,
    manifest,
    model_folder,
    profiling,
    runtime,
    stage,
    storage,
    tracking,
)
from components.core.distributed import Context
from components.core.host_memory import reuse_freed_memory
from components.core.training import checkpoint
from components.core.training.ema import EMA
from components.core.training.events import EventLog
from components.core.training.run import result, training_run
from components.vae import load_vae
from components.vae.config import VAEConfig, load_vae_config
from components.vae.discriminator import PatchDiscriminator3D
from components.vae.losses import VAELoss
from components.vae.model import CausalVAE
from components.vae.tail_init import image_kernels_to_tail
from components.vae.train_export import finish
from components.vae.train_inputs import STAGES, Handoff, open_loader, read_init, weights_hash
from components.vae.train_loop import Loop
from components.vae.train_step import Autoencoder, Parts


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
    config = config.for_phase(phase)
    data_manifest = manifest.manifest_uri(data)
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
    run_hash = weights_hash(phase, config, ctx.dp_size, handoff)
    done = stage.finished(out, run_hash, inputs)
    if done:
        return result(done, skipped=True)
    # One writer per output folder: rank 0 holds the lease for the job (the other ranks write only their own
    # checkpoint shards, inside it).
    with lease.hold(out, owner=f"t2v vae train --phase {phase}") if ctx.is_main else contextlib.nullcontext() as held:
        return _fit(phase, config, ctx, out, inputs, handoff, run_hash, preset, parent_run_id, held)


def _fit(phase: int, config: VAEConfig, ctx: Context, out: str, inputs: dict[str, dict[str, str]],
         handoff: Handoff | None, run_hash: str, preset: str, parent_run_id: str | None,
         held: lease.Lease | None) -> dict[str, Any]:
    data_manifest = inputs["data"]["uri"]
    if ctx.distributed:
        local = storage.local_dir(out)
        distributed.log_to_rank_file(ctx, local / "logs" if local else tracking.t2v_home() / "logs" / STAGES[phase])
    parts = build(config, ctx, handoff)
    loader = open_loader(data_manifest, config, config.train.seed, ctx)
    events = EventLog(out, write=ctx.is_main)
    point = checkpoint.resume_point(out, ctx, run_hash, events)
    tags = {"stage": STAGES[phase], "phase": phase, "preset": preset, "processes": ctx.world_size,
            **(handoff.lineage if handoff else {})}
    params = {"phase": phase, "preset": preset, "data": data_manifest, "processes": ctx.world_size,
              "init": handoff.model_folder if handoff else None,
              "init_from_images": bool(handoff and handoff.from_images), **config.model_dump(mode="json")}
    with training_run(ctx, STAGES[phase], point.mlflow_run_id, parent_run_id, tags, params) as run:
        loop = Loop(phase, config, ctx, out, run_hash, parts, loader, events, run)
        checkpoint.start_or_resume(loop, point)
        started, start_step = time.perf_counter(), loop.step
        # Every step reallocates the same tensors: keeping freed memory makes CPU steps ~1.3x faster.
        with reuse_freed_memory(enabled=ctx.device.type == "cpu"), profiling.PeakMemory(ctx.device, interval=0.05) as memory:
            loop.fit()
        seconds = time.perf_counter() - started
        return finish(loop, preset, inputs, handoff, seconds, loop.step - start_step, memory.peak, held)


@torch.no_grad()
def start_posterior_at(model: CausalVAE, logvar: float) -> None:
    """Set the bias of the log-variance half of the moments layer (quant_conv, else the encoder's conv_out)."""
    layer = (model.quant_conv or model.encoder.conv_out).conv
    layer.bias[layer.out_channels // 2:] = logvar


def build(config: VAEConfig, ctx: Context, handoff: Handoff | None) -> Parts:
    """Model (phase-1 EMA weights on a handoff), discriminator, EMA, losses and optimizers on this rank."""
    cfg = config.train
    runtime.seed_everything(cfg.seed)  # the same seed on every rank: the weights start equal
    model = CausalVAE(config.model).to(ctx.device)
    if handoff:  # live weights := phase-1 EMA weights; EMA and optimizers start fresh
        model_folder.load_weights(model, load_vae(handoff.model_folder).state_dict(), handoff.model_folder)
        if handoff.from_images:
            image_kernels_to_tail(model)
    elif cfg.init_logvar is not None:
        start_posterior_at(model, cfg.init_logvar)
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
