"""The end of a DiT training stage: the final checkpoint, then rank 0 publishes `model/` (live weights),
`model_ema/` (EMA weights, what the next stage and sampling read), `conditioning.json`, metrics, the
registered model version with its `stage<N>` alias, and the manifest (last)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from components.core import distributed, lease, manifest, stage, storage, tracking
from components.core.training import checkpoint
from components.core.training.publish import publish_records
from components.core.training.run import result
from components.dit import save_dit
from components.dit.model import OpenSoraT2V
from components.dit.sample_sources import FOLDER_TAG
from components.dit.train_inputs import Handoff, stage_name
from components.dit.train_loop import Loop

REGISTERED_MODEL = "t2v-dit"
CONDITIONING_FILE = "conditioning.json"


def finish(loop: Loop, preset: str, inputs: dict[str, dict[str, str]], handoff: Handoff | None,
           conditioning: dict[str, Any], seconds: float, steps_this_run: int, peak_memory: int | None,
           held: lease.Lease | None) -> dict[str, Any]:
    ctx, parts, out = loop.ctx, loop.parts, loop.out
    final_uri = loop.save()
    # Collectives (every rank): whole tensors gathered from the FSDP2 shards, on rank 0's CPU.
    weights = {"model": checkpoint.full_weights(parts.model), "model_ema": checkpoint.full_weights(parts.model, parts.ema)}
    written = None
    if ctx.is_main:
        metrics = {"steps": loop.step, "final_loss": loop.last_loss, "seconds_this_run": seconds,
                   "steps_per_second": steps_this_run / seconds if seconds > 0 else None, "processes": ctx.world_size,
                   "peak_memory_mb": None if peak_memory is None else peak_memory / 2**20,
                   "bucket_samples": loop.bucket_samples, "bad_steps": loop.events.count("bad_step"),
                   "rollbacks": loop.guard.rollbacks, "skip_batches": loop.guard.skip_batches,
                   "resumes": loop.events.count("resume")}
        metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        files: dict[str, dict[str, Any]] = {}
        with storage.staging_dir("t2v-dit-model-") as tmp:
            module = OpenSoraT2V(parts.model.config)  # a plain copy on CPU: the trained one may be sharded
            for name, state in weights.items():
                module.load_state_dict(state)
                save_dit(Path(tmp) / name, module)
            (Path(tmp) / CONDITIONING_FILE).write_text(json.dumps(conditioning, indent=2, sort_keys=True) + "\n")
            files.update(stage.upload_folder(Path(tmp), out))
            loop.run.log_artifact(Path(tmp) / "model_ema", "model_ema")
        files.update(publish_records(out, metrics, loop.events, final_uri, loop.run, loop.step))
        final_name = storage.relative_to(final_uri, out)
        lineage = handoff.lineage if handoff else {}
        alias = f"stage{loop.number}"
        version = None
        if loop.run.run is not None:
            version = tracking.register_model(REGISTERED_MODEL, loop.run.run, "model_ema",
                                              tags={"stage": stage_name(loop.number), FOLDER_TAG: str(out), **lineage})
            tracking.set_model_alias(REGISTERED_MODEL, alias, version)
        written = manifest.build_manifest(
            stage=stage_name(loop.number), preset=preset, config=loop.config.model_dump(mode="json"),
            config_hash=loop.run_hash, inputs=inputs, files=files, mlflow_run_id=loop.run.run_id,
            out=str(out), model=storage.join(out, "model_ema"), steps=loop.step, stage_number=loop.number,
            stage_config=loop.stage.model_dump(mode="json"), conditioning=conditioning,
            final_checkpoint=final_name, lineage=lineage, metrics=metrics, processes=ctx.world_size,
            registered_model={"name": REGISTERED_MODEL, "version": version, "alias": alias} if version else None,
        )
        held.check()  # still ours: a takeover of a stale lease means another run owns the folder now
        stage.publish(out, written)
    return result(distributed.broadcast_object(written, ctx), skipped=False)

