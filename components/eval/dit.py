"""`t2v dit eval`: how well a DiT stage follows its prompts, and its validation loss, comparable across stages.

    evaluate_dit("runs/tiny/dit-stage5", "runs/tiny/latents", "runs/tiny/dit-eval")

1. Prompts: held-out synthetic shapes prompts (`prompts.py`: balanced, unseen in the latent folder's
   training captions, seeds seed + i), or for real data the captions of the held-out latent set.
2. Videos: sampled from the DiT's EMA weights with the VAE and text encoder it was trained with
   (`components.dit.sample.Sampler`), at a fixed size, scheduler, step count, guidance and seeds.
3. Scores: prompt adherence read back from the pixels with a shuffled-prompt control (`adherence.py`),
   the validation loss per fixed timestep on the held-out latents (`val_loss.py`), the CLIP score when a
   CLIP model is configured (`clip_score.py`).
4. Outputs: `metrics.json` (the protocol and every number), `samples.png` and `samples.gif` (grid),
   `videos/NN.mp4`, `summary.md` (headline numbers), then `manifest.json` last; one MLflow run nested
   under the pipeline's, with metrics named alike for every stage (`report.mlflow_metrics`).

A finished output with the same inputs (model, VAE, text encoder and latent checksums) and settings is
not evaluated again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.core import lease, manifest, media, stage, storage, tracking
from components.core.config import config_hash
from components.eval import adherence, latents, report
from components.eval.config import EvalConfig, load_eval_config
from components.eval.prompts import heldout_prompts, heldout_summary

log = logging.getLogger(__name__)

STAGE = "dit-eval"


def evaluate_dit(dit: str, data: str | None, out: str, preset: str = "tiny", overrides: Sequence[str] = (),
                 parent_run_id: str | None = None) -> dict[str, Any]:
    """Evaluate the DiT `dit` (a stage folder, a model folder or `models:/t2v-dit@stageN`) with the latent
    folder `data` (None: the one its conditioning.json names); write the report to `out`."""
    config = load_eval_config(preset, overrides)
    with lease.hold(out, owner=f"t2v dit eval --dit {dit}") as held:
        return _evaluate_stage(str(dit), data, str(out), str(preset), config, parent_run_id, held)


def _evaluate_stage(dit: str, data: str | None, out: str, preset: str, config: EvalConfig,
                    parent_run_id: str | None, held: lease.Lease) -> dict[str, Any]:
    from components.dit.sample import Sampler
    from components.dit.sample_sources import folder_sha256, resolve_sources

    sources = resolve_sources(dit)
    sampling = config.sampling
    sources.latent_shape(sampling.frames, sampling.height, sampling.width)  # a bad size fails before any work
    data = data or (sources.conditioning or {}).get("latents")
    if not data:
        raise ValueError(f"--data: {dit} names no latent folder (conditioning.json 'latents'): give --data")
    latent_manifest = latents.manifest_of(data)
    inputs = {
        "dit": {"uri": sources.model_folder, "sha256": folder_sha256(sources.model_folder)},
        "vae": {"uri": sources.vae, "sha256": folder_sha256(sources.vae)},
        "text_encoder": {"uri": sources.text_encoder, "sha256": str(folder_sha256(sources.text_encoder))},
        "data": stage.input_file(latent_manifest),
    }
    eval_hash = config_hash(config)
    finished = stage.finished(out, eval_hash, inputs)
    if finished:
        return {**finished["summary"], "skipped": True}

    storage.delete(storage.join(out, manifest.MANIFEST_FILE))  # rewriting: never look finished meanwhile
    prompts = _prompts(config, latent_manifest)
    sampler = Sampler.from_sources(sources, config.device)
    protocol = {
        "prompt_source": config.prompts.source, "prompts": prompts["prompts"], "heldout": prompts["heldout"],
        "sampling": {**sampling.model_dump(mode="json"), "negative_prompt": "", "seeds": "seed + prompt index"},
        "models": sampler.provenance(), "data": latent_manifest, "device": str(sampler.device),
    }
    params = {"dit": dit, "data": data, "preset": preset, "prompt_source": config.prompts.source,
              "prompts_count": len(prompts["texts"]), **{f"sampling.{k}": v for k, v in sampling.model_dump().items()}}
    with tracking.stage_run(STAGE, parent_run_id=parent_run_id, params=params,
                            tags={"stage": STAGE, "preset": preset, "dit": dit}) as run:
        report_data, videos = _score(sampler, prompts["texts"], latent_manifest, config)
        report_data = {"protocol": protocol, **report_data}
        with storage.staging_dir("t2v-dit-eval-") as staging:
            local = Path(staging)
            summary_text = _write_outputs(local, report_data, videos, prompts["texts"], config, title=f"DiT eval: {dit}")
            files = stage.upload_folder(local, out)
            run.log_artifact(local, "eval")
        metrics = report.mlflow_metrics(report_data)
        run.log_metrics(metrics)
        if report_data.get("val_loss"):  # one curve over timesteps: MLflow plots metric history by step
            for step, value in zip(report_data["val_loss"]["timesteps"], report_data["val_loss"]["loss"], strict=True):
                run.log_metrics({"eval/val_loss_by_timestep": value}, step=step)
        summary = {**metrics, "out": out, "metrics": storage.join(out, "metrics.json"),
                   "summary_md": storage.join(out, "summary.md"), "grid": storage.join(out, "samples.png"),
                   "manifest": storage.join(out, manifest.MANIFEST_FILE), "mlflow_run_id": run.run_id,
                   "mlflow_url": tracking.run_url(run)}
        held.check()
        stage.publish(out, manifest.build_manifest(
            stage=STAGE, preset=preset, config=config.model_dump(mode="json"), config_hash=eval_hash, inputs=inputs,
            files=files, mlflow_run_id=run.run_id, summary=summary))
    log.info("dit eval: %s", ", ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in metrics.items()
                                       if k.startswith(("eval/adherence/", "eval/val_loss/mean", "eval/clip_score"))))
    return {**summary, "markdown": summary_text, "skipped": False}


def _prompts(config: EvalConfig, latent_manifest: str) -> dict[str, Any]:
    """The prompt texts, with their seeds and (shapes) how many are held out."""
    settings = config.prompts
    if settings.source == "shapes":
        chosen = heldout_prompts(settings.count, settings.seed, latents.training_captions(latent_manifest))
        return {"texts": [p.text for p in chosen], "heldout": heldout_summary(chosen),
                "prompts": [{"text": p.text, "seed": p.seed, "unseen_triple": p.unseen_triple,
                             "unseen_caption": p.unseen_caption} for p in chosen]}
    captions = latents.validation_captions(latent_manifest, settings.count)
    if len(captions) < 2:
        raise ValueError(f"{latent_manifest}: the held-out set has {len(captions)} distinct captions, need >= 2")
    return {"texts": captions, "heldout": None,
            "prompts": [{"text": c, "seed": settings.seed + i} for i, c in enumerate(captions)]}


def _score(sampler, prompts: list[str], latent_manifest: str, config: EvalConfig) -> tuple[dict[str, Any], np.ndarray]:
    sampling = config.sampling
    started = time.perf_counter()
    videos = sampler.generate(prompts, frames=sampling.frames, height=sampling.height, width=sampling.width,
                              steps=sampling.steps, guidance=sampling.guidance, scheduler=sampling.scheduler,
                              seed=config.prompts.seed, batch=sampling.batch)  # (N, T, H, W, 3) uint8 RGB
    sampled = time.perf_counter()
    result: dict[str, Any] = {"adherence": None, "val_loss": None, "clip_score": None}
    if config.prompts.source == "shapes":
        result["adherence"] = adherence.score_videos(list(videos), prompts, config.prompts.control_seed,
                                                     config.prompts.object_fraction)
    scored = time.perf_counter()
    if config.val_loss.enabled and latents.has_validation_set(latent_manifest):
        result["val_loss"] = latents.validation_loss(sampler, latent_manifest, config.val_loss)
    elif config.val_loss.enabled:  # the rest of the evaluation still stands: say why this number is missing
        result["val_loss_skipped"] = f"{latent_manifest}: no held-out val/ set (too few clips for encode.val_fraction)"
        log.warning("validation loss skipped: %s", result["val_loss_skipped"])
    validated = time.perf_counter()
    if config.clip.model:
        from components.eval.clip_score import ClipScorer

        result["clip_score"] = ClipScorer(config.clip.model, config.clip.allow_download,
                                          sampler.device).score(list(videos), prompts)
    result["timing"] = {"sampling_seconds": sampled - started,
                        "sampling_seconds_per_clip": (sampled - started) / len(prompts),
                        "adherence_seconds": scored - sampled, "val_loss_seconds": validated - scored,
                        "clip_seconds": time.perf_counter() - validated}
    return result, videos


def _write_outputs(local: Path, report_data: dict[str, Any], videos: np.ndarray, prompts: list[str],
                   config: EvalConfig, title: str) -> str:
    readings = report_data["adherence"]["videos"] if report_data.get("adherence") else None
    shown = min(config.report.grid_prompts, len(prompts))
    report.save_grid(videos[:shown], prompts[:shown], readings[:shown] if readings else None, local / "samples.png",
                     config.report.grid_frames)
    report.save_animated_grid(videos[:shown], local / "samples.gif", config.sampling.fps)
    for index, video in enumerate(videos):
        media.write_mp4(video, local / "videos" / f"{index + 1:02d}.mp4", fps=config.sampling.fps)
    summary_text = report.summary_markdown(report_data, title)
    (local / "summary.md").write_text(summary_text)
    (local / "metrics.json").write_text(json.dumps(report_data, indent=2, sort_keys=True, default=str) + "\n")
    return summary_text
