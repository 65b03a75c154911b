"""`t2v dit train --stage N`: one stage of the DiT's five-stage curriculum (reference notes §3).

setup (config, inputs, skip when finished, processes: here) -> build (model, EMA, optimizer: here) -> fit
(`train_loop.py`, the step in `train_step.py`) -> finish (`train_export.py`). Runs under torchrun from the
start: FSDP2 (`fully_shard`) per transformer block then the root, on CPU (gloo) as on accelerators, since
the 2.77B model with AdamW state does not fit one device. The pieces every trainer shares are the kit in
`components.core.training`.

Differences to the reference, on purpose:
- Latents and text come precomputed from `t2v dit encode` (the posterior's mean and log-variance, sampled
  here every step with the trainer's own generator, §9.15); nothing re-runs the VAE or mT5 per step.
- Stage k > 1 starts from stage k - 1's EMA weights with a strict key match (the reference loads
  `strict=False` and drops mismatched keys silently, §9.22), a fresh optimizer and a fresh EMA; the
  previous stage is recorded as lineage. Resuming the same stage restores live weights, EMA, optimizer,
  RNGs and the loader position (§9.20) and is a different operation from the handoff.
- Seeds are the same on every rank only where they must be (initial weights, the step's noise, drawn for
  the global batch and sliced per rank); the reference correlates every rank's noise (§9.5).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch

from components.core import (
    distributed,
    lease,
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
from components.dit import load_dit
from components.dit.config import DiTConfig, load_dit_config
from components.dit.diffusion import make_scheduler
from components.dit.latents import read_latent_manifest
from components.dit.model import OpenSoraT2V
from components.dit.train_config import StageConfig
from components.dit.train_export import finish
from components.dit.train_inputs import (
    Handoff,
    conditioning_record,
    open_loader,
    read_init,
    select_buckets,
    stage_model,
    stage_name,
    weights_hash,
)
from components.dit.train_loop import Loop
from components.dit.train_step import Conditioning, Parts


def train_dit(stage: int, data: str, out: str, init: str | None = None, preset: str = "tiny",
              overrides: Sequence[str] = (), parent_run_id: str | None = None) -> dict[str, Any]:
    """Train stage `stage` (1-based) of the preset's curriculum into `out` on the latent folder `data` (or the
    stage's own `data`); resume after a crash; do nothing when `out` already holds this stage finished.

    Stage k > 1 starts from the EMA weights of stage k - 1 (`init` = its output folder)."""
    config = load_dit_config(preset, overrides)
    stage_config = config.train.stage(stage)
    if stage > 1 and init is None:
        raise ValueError(f"stage {stage} starts from stage {stage - 1}'s EMA weights: pass --init <stage-{stage - 1} "
                         "output folder>")
    latent_manifest, data_manifest, latent_root = read_latent_manifest(stage_config.data or data)
    ctx = distributed.setup(config.train.device, timeout_s=config.launch.timeout_s)
    try:
        return _setup_and_fit(stage, config, stage_config, ctx, (latent_manifest, data_manifest, latent_root), out, init,
                              preset, parent_run_id)
    finally:
        distributed.teardown()


def _setup_and_fit(number: int, config: DiTConfig, stage_config: StageConfig, ctx: Context,
                   latents: tuple[dict[str, Any], str, str], out: str, init: str | None, preset: str,
                   parent_run_id: str | None) -> dict[str, Any]:
    latent_manifest, data_manifest, latent_root = latents
    inputs = {"data": stage.input_file(data_manifest)}
    handoff = read_init(init, number) if init else None
    if handoff:
        inputs["init"] = handoff.input_entry
    buckets = select_buckets(latent_manifest, data_manifest, number, stage_config)
    loader = open_loader(data_manifest, buckets, config, stage_config, ctx)
    global_batches = {name: size * ctx.dp_size for name, size in loader.batch_sizes.items()}
    run_hash = weights_hash(number, config, stage_config, global_batches)
    done = stage.finished(out, run_hash, inputs)
    if done:
        return result(done, skipped=True)
    parts = build(config, stage_config, number, ctx, handoff)  # before the lease: a bad handoff writes nothing
    # One writer per output folder: rank 0 holds the lease for the job (the other ranks write only their own
    # checkpoint shards, inside it).
    owner = f"t2v dit train --stage {number}"
    with lease.hold(out, owner=owner) if ctx.is_main else contextlib.nullcontext() as held:
        if ctx.distributed:
            local = storage.local_dir(out)
            distributed.log_to_rank_file(ctx, local / "logs" if local else tracking.t2v_home() / "logs" / stage_name(number))
        events = EventLog(out, write=ctx.is_main)
        point = checkpoint.resume_point(out, ctx, run_hash, events)
        tags = {"stage": stage_name(number), "stage_number": number, "preset": preset, "processes": ctx.world_size,
                **(handoff.lineage if handoff else {})}
        params = {"stage": number, "preset": preset, "data": data_manifest, "processes": ctx.world_size,
                  "init": handoff.model_folder if handoff else None, "buckets": buckets,
                  "global_batches": global_batches, "stage_config": stage_config.model_dump(mode="json"),
                  **config.model_dump(mode="json", exclude={"train": {"stages"}})}
        with training_run(ctx, stage_name(number), point.mlflow_run_id, parent_run_id, tags, params) as run:
            loop = Loop(number, config, ctx, out, data_manifest, run_hash, parts, loader,
                        Conditioning(float(loader.scale_factor), loader.empty_text, loader.empty_mask), events, run)
            checkpoint.start_or_resume(loop, point)
            started, start_step = time.perf_counter(), loop.step
            # Every step reallocates the same tensors: keeping freed memory makes CPU steps faster.
            with reuse_freed_memory(enabled=ctx.device.type == "cpu"), \
                    profiling.PeakMemory(ctx.device, interval=0.05) as memory:
                loop.fit()
            seconds = time.perf_counter() - started
            record = conditioning_record(latent_manifest, data_manifest, latent_root)
            return finish(loop, preset, inputs, handoff, record, seconds, loop.step - start_step, memory.peak, held)


def build(config: DiTConfig, stage_config: StageConfig, number: int, ctx: Context, handoff: Handoff | None) -> Parts:
    """Model (stage k - 1's EMA weights on a handoff), sharded per block; fresh EMA and AdamW on this rank."""
    cfg = config.train
    runtime.seed_everything(cfg.seed)  # the same seed on every rank: the weights start equal
    model = OpenSoraT2V(stage_model(config, stage_config))
    if handoff:  # live weights := the previous stage's EMA weights, every key matched (§3.4, §9.22)
        model_folder.load_weights(model, load_dit(handoff.model_folder).state_dict(), handoff.model_folder)
    model.to(ctx.device)
    distributed.wrap(model, ctx, "fsdp", blocks=model.transformer_blocks)  # in place; identity when alone
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr(number), betas=cfg.optimizer.betas,
                                  eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay)
    return Parts(
        model=model,
        ema=EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup),  # after sharding: shadows sharded alike
        optimizer=optimizer,
        scheduler=make_scheduler(config.diffusion),
        diffusion=config.diffusion,
        noise=torch.Generator(device=ctx.device).manual_seed(cfg.seed),
        max_grad_norm=cfg.optimizer.max_grad_norm,
        ctx=ctx,
    )
