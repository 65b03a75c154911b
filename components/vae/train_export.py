"""The end of a VAE training phase: the final checkpoint, then rank 0 publishes the model folders
(EMA weights in `model/`, live weights in `model_raw/`), metrics and the manifest (last)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from components.core import distributed, lease, manifest, stage, storage, tracking
from components.core.training import checkpoint
from components.core.training.publish import publish_records
from components.core.training.run import result
from components.vae.official import save_vae
from components.vae.train_inputs import STAGES, Handoff
from components.vae.train_loop import Loop

REGISTERED_MODEL = "t2v-vae"


@torch.no_grad()
def calibrated_scale_factor(loop: Loop, ema_weights: dict[str, torch.Tensor]) -> float:
    """1 / std of the EMA encoder's posterior means over the next training batches of this rank (rank 0)."""
    module = copy.deepcopy(loop.parts.model).eval()
    module.load_state_dict(ema_weights)
    means = []
    for _ in range(loop.config.train.calibrate_scale_batches):
        _, video = loop.next_batch()
        means.append(module.encode(video).mode().float().flatten().cpu())
    return float(1.0 / torch.cat(means).std().clamp(min=1e-6))


def finish(loop: Loop, preset: str, inputs: dict[str, dict[str, str]], handoff: Handoff | None,
           seconds: float, steps_this_run: int, peak_memory: int | None, held: lease.Lease | None) -> dict[str, Any]:
    """Final checkpoint, then rank 0 exports model folders (EMA in model/, live in model_raw/) and the manifest."""
    ctx, parts, out = loop.ctx, loop.parts, loop.out
    final_uri = loop.save()
    weights = {"model": checkpoint.full_weights(parts.model, parts.ema), "model_raw": checkpoint.full_weights(parts.model)}
    final_losses = distributed.mean_over_ranks(loop.last_terms, ctx)
    written = None
    if ctx.is_main:
        metrics = {"steps": loop.step, "final_losses": final_losses, "seconds_this_run": seconds,
                   "steps_per_second": steps_this_run / seconds if seconds > 0 else None, "processes": ctx.world_size,
                   "peak_memory_mb": None if peak_memory is None else peak_memory / 2**20,
                   "bad_steps": loop.events.count("bad_step"), "rollbacks": loop.guard.rollbacks,
                   "skip_batches": loop.guard.skip_batches, "resumes": loop.events.count("resume")}
        metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        files: dict[str, dict[str, Any]] = {}
        scale_factor = parts.model.config.scale_factor
        if loop.config.train.calibrate_scale_batches:
            scale_factor = metrics["scale_factor"] = calibrated_scale_factor(loop, weights["model"])
        with storage.staging_dir("t2v-vae-model-") as tmp:
            for name, state in weights.items():
                module = copy.deepcopy(parts.model).cpu()
                module.load_state_dict(state)
                module.config = module.config.model_copy(update={"scale_factor": scale_factor})
                save_vae(Path(tmp) / name, module)
            files.update(stage.upload_folder(Path(tmp), out))
            loop.run.log_artifact(Path(tmp) / "model", "model")
        files.update(publish_records(out, metrics, loop.events, final_uri, loop.run, loop.step))
        final_name = storage.relative_to(final_uri, out)
        lineage = handoff.lineage if handoff else {}
        registered = None
        if loop.phase == 2:
            registered = tracking.register_model(REGISTERED_MODEL, loop.run.run, "model", tags={"stage": STAGES[2], **lineage})
        written = manifest.build_manifest(
            stage=STAGES[loop.phase], preset=preset, config=loop.config.model_dump(mode="json"),
            config_hash=loop.run_hash, inputs=inputs, files=files, mlflow_run_id=loop.run.run_id,
            out=str(out), model=storage.join(out, "model"), steps=loop.step, phase=loop.phase,
            final_checkpoint=final_name, lineage=lineage, metrics=metrics, processes=ctx.world_size,
            registered_model={"name": REGISTERED_MODEL, "version": registered} if registered else None,
        )
        held.check()  # still ours: a takeover of a stale lease means another run owns the folder now
        stage.publish(out, written)
    return result(distributed.broadcast_object(written, ctx), skipped=False)

