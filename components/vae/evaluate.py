"""`t2v vae eval`: reconstruction quality and speed of a VAE under the Report's protocol (reference notes §1.11).

Protocol: the first `num_frames` consecutive frames (4k+1) of each clip, short side resized to
`resolution` (bilinear, antialiased), centre crop `resolution`²; encode to the posterior MEAN (not a
sample) and decode, in fp32 by default, and compare in memory (no lossy re-encode between the two:
reference pitfall §9.10). Clips shorter than `num_frames` are left out and counted. PSNR/SSIM/LPIPS are
aggregated as the reference does (components.core.metrics).

Speed: encode and decode seconds per clip (CUDA synchronised). Memory: on CUDA the peak of
`torch.cuda.max_memory_allocated` during encode+decode; on CPU the peak resident set size above the
level at the start of the clip, sampled from /proc/self/statm every 2 ms by a thread (no tracemalloc,
which would miss torch's allocations and slow everything down), so short spikes can be missed.

Data: a shard manifest (folder or manifest.json of `t2v data shard`), an annotations JSON (list of
{"path": ...} relative to it), or a folder of mp4 files (its `annotations.json` when there is one, such as
the output of `t2v data synth --kind photos`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.core import lease, manifest, media, model_folder, profiling, runtime, stage, storage, tracking
from components.core.config import config_hash
from components.core.metrics import LPIPSMetric, MetricAggregator, video_metrics
from components.core.progress import Progress
from components.vae import load_vae
from components.vae.config import load_vae_config
from components.vae.train_config import EvalConfig

log = logging.getLogger(__name__)

STAGE = "vae-eval"
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")


def evaluate_vae(vae: str, data: str, out: str, preset: str = "tiny", overrides: Sequence[str] = (),
                 parent_run_id: str | None = None) -> dict[str, Any]:
    """Evaluate the VAE folder `vae` on `data`; write metrics.json, a grid PNG, a side-by-side mp4, manifest.json."""
    config = load_vae_config(preset, overrides).eval
    with lease.hold(out, owner=f"t2v vae eval --vae {vae}") as held:
        return _evaluate_stage(vae, data, out, preset, config, parent_run_id, held)


def _evaluate_stage(vae: str, data: str, out: str, preset: str, config: EvalConfig, parent_run_id: str | None,
                    held: lease.Lease) -> dict[str, Any]:
    source = _DataSource(data)
    # Never evaluate an unfinished or edited upstream output (a training run killed mid-save, a changed file).
    for uri in [storage.join(vae, name) for name in (model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE)]:
        if storage.exists(uri):
            manifest.require_finished(uri)
    if source.kind == "annotations":
        manifest.require_finished(source.index_uri)
    inputs = {"vae": {"uri": str(vae), "sha256": stage.folder_sha256(vae)}, "data": source.input_entry}
    eval_hash = config_hash(config)
    finished = stage.finished(out, eval_hash, inputs)
    if finished:
        return {**finished["metrics"], "out": str(out), "mlflow_run_id": finished["mlflow_run_id"], "skipped": True}

    device = runtime.select_device(config.device)
    amp_dtype = runtime.autocast_dtype(device, config.precision)
    model = load_vae(vae).to(device).eval()
    lpips_metric = LPIPSMetric(config.lpips_backbone, config.lpips_random_backbone, seed=config.seed).to(device)
    protocol = {
        "num_frames": config.num_frames, "resolution": config.resolution, "frames": "consecutive from frame 0",
        "resize": "short side, bilinear antialiased, then centre crop", "latents": "posterior mean",
        "precision": "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "lossy_reencode": False, "device": str(device), "lpips": lpips_metric.describe(),
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS above clip start (sampled)",
    }
    with tracking.stage_run(STAGE, parent_run_id=parent_run_id, params={"vae": vae, "data": data, **protocol},
                            tags={"stage": STAGE, "preset": preset}) as run:
        report, previews = _evaluate(model, lpips_metric, source, config, device, amp_dtype)
        report = {"protocol": protocol, **report, "notes": _notes(config)}
        if report["notes"]:
            run.set_tags({f"note.eval/{metric}": text for metric, text in report["notes"].items()})
        files = _write_outputs(out, report, previews, run)
        run.log_metrics({f"eval/{k}": v for k, v in report["metrics"].items()})
        run.log_metrics({f"eval/{k}": v for k, v in report["speed"].items() if v is not None})
        written = manifest.build_manifest(stage=STAGE, preset=preset, config=config.model_dump(mode="json"),
                                          config_hash=eval_hash, inputs=inputs, files=files,
                                          mlflow_run_id=run.run_id, metrics=_summary(report))
        held.check()
        stage.publish(out, written)
    return {**_summary(report), "out": str(out), "mlflow_run_id": run.run_id, "skipped": False}


def _notes(config: EvalConfig) -> dict[str, str]:
    """What a reader must know next to a number: metric -> note."""
    if not config.lpips_random_backbone:
        return {}
    return {"lpips": f"random {config.lpips_backbone} backbone (eval.lpips_random_backbone=true): tests the code "
                     "path only, not real LPIPS and not comparable to published numbers"}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {**report["metrics"], **{k: v for k, v in report["speed"].items()}, "clips": report["clips"],
            "lpips_comparable_to_published": report["protocol"]["lpips"]["comparable_to_published"],
            "notes": report["notes"]}


# --------------------------------------------------------------------------- the loop


def _evaluate(model, lpips_metric: LPIPSMetric, source: _DataSource, config: EvalConfig, device: torch.device,
              amp_dtype: torch.dtype | None) -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor]]]:
    aggregator = MetricAggregator()
    encode_seconds, decode_seconds, peak_bytes = [], [], []
    previews: list[tuple[torch.Tensor, torch.Tensor]] = []
    clips, too_short = 0, 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        video = torch.stack(batch).to(device)  # (B, 3, T, S, S) in [-1, 1]
        batch.clear()
        with profiling.PeakMemory(device) as memory, torch.no_grad(), runtime.autocast(device, amp_dtype):
            started = profiling.now(device)
            latents = model.encode(video).mode()  # (B, C, t, h, w): the posterior mean
            encoded = profiling.now(device)
            recon = model.decode(latents).float().clamp(-1, 1)  # (B, 3, T, S, S)
            decoded = profiling.now(device)
        per_clip = video.shape[0]
        encode_seconds.append((encoded - started) / per_clip)
        decode_seconds.append((decoded - encoded) / per_clip)
        peak_bytes.append(memory.peak)
        aggregator.update(video_metrics(recon, video, lpips_metric))
        if len(previews) < config.preview_clips:
            previews.append((video[:1].cpu(), recon[:1].cpu()))
        progress.update(clips)

    progress = Progress(STAGE, config.max_clips, unit="clip", log=log)

    for clip in source.clips():
        if config.max_clips is not None and clips >= config.max_clips:
            break
        prepared = prepare_clip(clip, config.num_frames, config.resolution)
        if prepared is None:
            too_short += 1
            continue
        batch.append(prepared)
        clips += 1
        if len(batch) == config.batch_size:
            flush()
    if batch:
        flush()
    if clips == 0:
        raise ValueError(f"{source.uri}: no clip has {config.num_frames} frames (left out {too_short} shorter ones)")
    # The first timing includes one-off warm-up (allocator, kernels); report the median as well.
    speed = {
        "encode_seconds_per_clip": float(np.mean(encode_seconds)),
        "encode_seconds_per_clip_median": float(np.median(encode_seconds)),
        "decode_seconds_per_clip": float(np.mean(decode_seconds)),
        "decode_seconds_per_clip_median": float(np.median(decode_seconds)),
        "peak_memory_mb": None if peak_bytes[0] is None else max(peak_bytes) / 2**20,
    }
    report = {"metrics": aggregator.result(), "per_timestep": aggregator.per_timestep(), "speed": speed,
              "clips": clips, "clips_too_short": too_short}
    return report, previews


def prepare_clip(video: torch.Tensor, num_frames: int, resolution: int) -> torch.Tensor | None:
    """(3, T, H, W) in [-1, 1] -> (3, num_frames, resolution, resolution), or None when T < num_frames."""
    if video.shape[1] < num_frames:
        return None
    frames = video[:, :num_frames].transpose(0, 1).float()  # (T, 3, H, W): consecutive from frame 0
    height, width = frames.shape[-2:]
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    if size != (height, width):
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    frames = frames[..., top : top + resolution, left : left + resolution]  # (T, 3, S, S)
    return frames.clamp(-1, 1).transpose(0, 1).contiguous()  # (3, T, S, S)


# --------------------------------------------------------------------------- data


class _DataSource:
    """Clips as (3, T, H, W) tensors in [-1, 1] from shards, annotations or a folder of videos."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        # An annotations .json is not a manifest: only a folder or a `manifest.json` can be a shard set.
        shard_manifest = self.uri if self.uri.endswith(manifest.MANIFEST_FILE) else storage.join(self.uri, manifest.MANIFEST_FILE)
        annotations = self.uri if self.uri.endswith(".json") else storage.join(self.uri, "annotations.json")
        if storage.exists(shard_manifest) and storage.read_json(shard_manifest).get("stage") == "shard":
            self.kind, self.index_uri = "shards", shard_manifest
        elif storage.exists(annotations):
            self.kind, self.index_uri = "annotations", annotations
        else:
            self.kind, self.index_uri = "folder", None
        if self.index_uri:
            data = storage.read_bytes(self.index_uri)
            self.input_entry = {"uri": self.index_uri, "sha256": storage.sha256_bytes(data)}
        else:
            self.videos = [uri for uri in storage.list_files(self.uri) if uri.lower().endswith(VIDEO_SUFFIXES)]
            if not self.videos:
                raise ValueError(f"--data {self.uri}: no shard manifest, annotations.json or video files")
            self.input_entry = {"uri": self.uri, "sha256": stage.folder_sha256(self.uri, self.videos)}

    def clips(self) -> Iterator[torch.Tensor]:
        if self.kind == "shards":
            yield from self._shard_clips()
            return
        for uri in self._video_uris():
            yield media.read_video(uri)

    def _video_uris(self) -> list[str]:
        if self.kind == "folder":
            return self.videos
        entries = storage.read_json(self.index_uri)
        if not isinstance(entries, list):
            raise ValueError(f"{self.index_uri}: annotations must be a JSON list of entries with 'path'")
        root = self.index_uri.rsplit("/", 1)[0]
        uris = []
        for index, entry in enumerate(entries):
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str):
                raise ValueError(f"{self.index_uri}: entry {index} has no string field 'path'")
            if path.lower().endswith(VIDEO_SUFFIXES):
                uris.append(path if path.startswith(("/", "s3://")) else storage.join(root, path))
        return uris

    def _shard_clips(self) -> Iterator[torch.Tensor]:
        from components.data.loader import BucketLoader, LoaderConfig  # the data component's public read API

        # One clip per batch, every video bucket, the schedule's order of epoch 0.
        loader = BucketLoader(self.index_uri, LoaderConfig(min_frames=2, max_batch_size=1, shuffle_shards=1),
                              rank=0, world_size=1)
        for batch in loader:
            yield from batch["video"]  # (3, T, H, W) each


# --------------------------------------------------------------------------- outputs


def _write_outputs(out: str, report: dict[str, Any], previews: list[tuple[torch.Tensor, torch.Tensor]],
                   run: tracking.Run) -> dict[str, dict[str, Any]]:
    with storage.staging_dir("t2v-vae-eval-") as tmp:
        local = Path(tmp)
        (local / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        if previews:
            original = torch.cat([p[0] for p in previews])  # (N, 3, T, S, S)
            recon = torch.cat([p[1] for p in previews])  # (N, 3, T, S, S)
            media.save_reconstruction_grid(original, recon, local / "reconstruction.png")
            media.save_side_by_side_video(original, recon, local / "reconstruction.mp4")
        files = stage.upload_folder(local, out)
        run.log_artifact(local, "eval")
    return files
