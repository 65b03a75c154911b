"""`t2v data shard`: bucket the kept clips and write them as WebDataset tar shards, one bucket per shard.

Each sample is encoded once: cut to its bucket's frame count at `train_fps` (a centred window, not the
reference's off-by-one random crop, reference notes §9.12), centre-cropped to the bucket aspect, resized
to the bucket size and encoded with libx264 at high quality. Its PSNR against the resized frames is
measured by decoding the bytes back. The output folder holds `shards/<bucket>-<n>.tar`, `index.json`
(sample keys per shard), `report.json` and, written last, `manifest.json`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import tarfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import webdataset

from components.core import lease, storage, tracking
from components.core import manifest as core_manifest
from components.core.config import config_hash
from components.core.progress import Progress
from components.data.annotations import annotations_root, resolve_inside
from components.data.buckets import (
    Bucket,
    ClipShape,
    assign_bucket,
    centre_crop_box,
    centre_window,
    make_buckets,
    resample_indices,
)
from components.data.config import ShardConfig, load_data_config
from components.data.shard_manifest import manifest_schema
from components.data.video_io import crop_resize, decode_image, decode_video, encode_h264, is_image_path, psnr

log = logging.getLogger(__name__)

SHARD_FOLDER = "shards"
INDEX_FILE = "index.json"
REPORT_FILE = "report.json"
# Annotation fields that are not scores; every other numeric field is copied into the sample's `scores`.
_KNOWN_FIELDS = {"path", "cap", "resolution", "fps", "duration", "num_frames", "video_root"}
# Bounds on what an annotation may declare, checked before anything is sized from it (a declared
# num_frames of 1e12 once meant a 5.8 TiB index array): 16k pixels a side, a million frames, 1000 fps,
# a day of video.
MAX_SIDE = 16384
MAX_FRAMES = 1_000_000
MAX_FPS = 1000.0
MAX_SECONDS = 86400.0


@dataclass(frozen=True)
class ClipTask:
    number: int  # position in the annotations list
    path: str  # as written in the annotations
    source: str  # resolved local path or s3:// URI
    shape: ClipShape
    bucket: Bucket
    record: dict[str, Any]


# --------------------------------------------------------------------------- planning


def read_annotations(uri: str) -> tuple[list[dict[str, Any]], str]:
    """The annotations list and its sha256."""
    data = storage.read_bytes(uri)
    try:
        records = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise ValueError(f"{uri}: expected a JSON list of clips (Open-Sora Plan schema), got {type(records).__name__}")
    return records, storage.sha256_bytes(data)


def source_uri(record: dict[str, Any], annotations_uri: str, allow_external_symlinks: bool = False) -> tuple[str | None, str]:
    """`(uri, "")`: `path` below the entry's `video_root` if it has one, else below the annotations file's
    folder (an absolute path must lie there too); `(None, why)` when the path leaves that folder, lexically
    or through a symlink (`annotations.resolve_inside`)."""
    root = str(record.get("video_root") or annotations_root(annotations_uri))
    return resolve_inside(root, str(record["path"]), allow_external_symlinks)


def _bounded(value: Any, where: str, field: str, upper: float, integer: bool) -> float:
    """A positive number up to `upper` (checked before anything is sized from it), else ValueError naming
    the entry and the field."""
    try:
        number = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number <= upper or (integer and not number.is_integer()):
        kind = "integer" if integer else "number"
        raise ValueError(f"{where}: field '{field}' must be a positive {kind} up to {upper:g}, got {value!r}")
    return number


def clip_shape(record: dict[str, Any], where: str) -> ClipShape:
    """The clip's shape from its annotation; ValueError naming the entry and the field when one is missing,
    malformed or out of bounds."""
    for field in ("path", "cap", "resolution"):
        if field not in record:
            raise ValueError(f"{where}: missing field '{field}'")
    captions = record["cap"] if isinstance(record["cap"], list) else [record["cap"]]
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: field 'cap' must be a non-empty string or list of strings")
    resolution = record["resolution"]
    if not isinstance(resolution, dict) or not {"height", "width"} <= resolution.keys():
        raise ValueError(f"{where}: field 'resolution' must be {{height, width}}")
    height, width = (int(_bounded(resolution[key], where, f"resolution.{key}", MAX_SIDE, integer=True))
                     for key in ("height", "width"))
    if is_image_path(str(record["path"])):
        return ClipShape(height, width, 1, None)
    if "fps" not in record or not record["fps"]:
        raise ValueError(f"{where}: video without field 'fps'")
    fps = _bounded(record["fps"], where, "fps", MAX_FPS, integer=False)
    if "num_frames" in record:
        num_frames = int(_bounded(record["num_frames"], where, "num_frames", MAX_FRAMES, integer=True))
    elif "duration" in record:
        duration = _bounded(record["duration"], where, "duration", MAX_FRAMES / fps, integer=False)
        num_frames = int(fps * duration + 1e-6)  # reference notes §5.2: int(fps * duration)
    else:
        raise ValueError(f"{where}: video without field 'num_frames' or 'duration'")
    if num_frames / fps > MAX_SECONDS:  # frame indices at train_fps are allocated from the duration
        raise ValueError(f"{where}: {num_frames} frames at {fps:g} fps last more than {MAX_SECONDS:g} s")
    return ClipShape(height, width, max(num_frames, 1), fps)


def plan(records: list[dict[str, Any]], annotations_uri: str, cfg: ShardConfig) -> tuple[list[ClipTask], list[dict]]:
    """Assign every clip to a bucket; those that fit none are returned with their reason."""
    buckets = make_buckets(cfg.frames, cfg.resolutions)
    tasks, unfit = [], []
    for number, record in enumerate(records):
        where = f"{annotations_uri} entry {number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object")
        shape = clip_shape(record, where)
        source, reason = source_uri(record, annotations_uri, cfg.allow_external_symlinks)
        bucket = None
        if source is not None:
            bucket, reason = assign_bucket(shape, buckets, cfg.train_fps, cfg.max_upscale, cfg.max_aspect_error)
        if bucket is None:
            unfit.append({"number": number, "path": record["path"], "reason": reason})
        else:
            tasks.append(ClipTask(number, str(record["path"]), source, shape, bucket, record))
    return tasks, unfit


def _check_upstream(annotations: str, records: list[Any], annotations_sha: str) -> None:
    """Never shard an unfinished or changed upstream output: the annotations' stage manifest, when there is
    one, must list them with this sha256; a filter's kept.json (entries carrying the `sha256` and
    `video_root` it records) must have one, as its run may have died before finishing."""
    if core_manifest.require_finished(annotations, annotations_sha) is not None:
        return
    if any(isinstance(r, dict) and {"sha256", "video_root"} <= r.keys() for r in records):
        raise ValueError(f"{annotations}: a filter output without a finished manifest beside it (its run did not "
                         "finish): run the filter again")
    if not records:
        raise ValueError(f"{annotations}: no clips to shard")


# --------------------------------------------------------------------------- one clip


def sample_key(source_sha256: str, bucket: Bucket) -> str:
    return hashlib.sha256(f"{source_sha256}/{bucket.name}".encode()).hexdigest()[:32]


def encode_clip(task: ClipTask, cfg: ShardConfig) -> dict[str, Any]:
    """Decode, cut, crop-resize and encode one clip. Returns the sample, or {"unfit": reason}."""
    try:
        data = storage.read_bytes(task.source)
    except storage.StorageError as exc:  # listed in the report with the reason, like any clip that cannot be used
        return {"unfit": f"unreadable source: {exc}"}
    source_sha = storage.sha256_bytes(data)
    expected_sha = task.record.get("sha256")  # the filter's kept.json records what it measured
    if expected_sha is not None and expected_sha != source_sha:
        return {"unfit": f"{task.source} changed since it was filtered: sha256 {source_sha}, the annotations "
                         f"say {expected_sha}"}
    bucket = task.bucket
    try:
        if task.shape.is_image:
            frame_indices = np.zeros(1, np.int64)
            frames = decode_image(data)
        else:
            frame_indices = centre_window(resample_indices(task.shape.num_frames, task.shape.fps, cfg.train_fps), bucket.frames)
            frames = decode_video(data, frame_indices)
    except ValueError as exc:  # the file disagrees with its annotation: report it, never drop silently
        return {"unfit": f"cannot read {bucket.frames} frames from {task.source}: {exc}"}
    if frames.shape[1:3] != (task.shape.height, task.shape.width):  # the bucket was chosen from the claim
        return {"unfit": f"{task.source} is {frames.shape[1]}x{frames.shape[2]} (height x width), its annotation "
                         f"declares {task.shape.height}x{task.shape.width}"}
    resized = crop_resize(frames, bucket.height, bucket.width)  # (T, H, W, 3)
    mp4 = encode_h264(resized, cfg.train_fps, cfg.crf, cfg.pix_fmt, cfg.x264_preset)
    quality = psnr(resized, decode_video(mp4))
    top, left, crop_h, crop_w = centre_crop_box(frames.shape[1], frames.shape[2], bucket.aspect)
    record = task.record
    captions = record["cap"] if isinstance(record["cap"], list) else [record["cap"]]
    meta = {
        "key": sample_key(source_sha, bucket),
        "captions": captions,
        "source": {"path": task.path, "uri": task.source, "sha256": source_sha,
                   "height": int(frames.shape[1]), "width": int(frames.shape[2]),
                   "fps": task.shape.fps, "num_frames": task.shape.num_frames},
        "bucket": {"name": bucket.name, "frames": bucket.frames, "height": bucket.height, "width": bucket.width},
        "fps": None if task.shape.is_image else cfg.train_fps,
        "frame_indices": [int(i) for i in frame_indices],
        "crop": {"top": top, "left": left, "height": crop_h, "width": crop_w},
        "scores": {k: v for k, v in record.items() if k not in _KNOWN_FIELDS and isinstance(v, int | float)},
        "psnr": None if math.isinf(quality) else round(quality, 3),
    }
    return {"key": meta["key"], "mp4": mp4, "meta": meta, "psnr": quality}


# --------------------------------------------------------------------------- shard files


class _BucketShards:
    """Rolling tar writers for one bucket: a shard closes at `shard_max_samples` or `shard_max_bytes`."""

    def __init__(self, bucket: Bucket, staging: Path, out: str, cfg: ShardConfig, uploads: ThreadPoolExecutor):
        self.bucket, self.staging, self.out, self.cfg, self.uploads = bucket, staging, out, cfg, uploads
        self.finished: list[tuple[str, list[str], Future]] = []  # (relative uri, keys, upload future -> entry)
        self.writer: webdataset.TarWriter | None = None
        self.keys: list[str] = []
        self.size = 0

    def add(self, key: str, mp4: bytes, meta: dict[str, Any]) -> None:
        payload = json.dumps(meta, sort_keys=True).encode()
        sample_bytes = len(mp4) + len(payload) + 3 * tarfile.BLOCKSIZE
        if self.writer is not None and (len(self.keys) >= self.cfg.shard_max_samples
                                        or self.size + sample_bytes > self.cfg.shard_max_bytes):
            self.close()
        if self.writer is None:
            self.path = self.staging / f"{self.bucket.name}-{len(self.finished):05d}.tar"
            # mtime 0 and a bit-exact encoder (video_io._x264_params): a re-run writes byte-identical shards.
            self.writer = webdataset.TarWriter(str(self.path), mtime=0, encoder=False)
        self.writer.write({"__key__": key, "mp4": mp4, "json": payload})
        self.keys.append(key)
        self.size += sample_bytes

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        relative = f"{SHARD_FOLDER}/{self.path.name}"
        future = self.uploads.submit(_upload, self.path, storage.join(self.out, relative), len(self.keys))
        self.finished.append((relative, self.keys, future))
        self.writer, self.keys, self.size = None, [], 0


def _upload(path: Path, uri: str, samples: int) -> dict[str, Any]:
    """Put one finished shard into the store (multipart on S3 for large ones) and free the staging copy."""
    size = path.stat().st_size
    sha256 = storage.put_file(path, uri)
    path.unlink()
    return {"samples": samples, "bytes": size, "sha256": sha256}


# --------------------------------------------------------------------------- the stage


def _psnr_summary(values: list[float]) -> dict[str, float | None]:
    finite = [v for v in values if not math.isinf(v)]
    return {"mean": round(float(np.mean(finite)), 3) if finite else None,
            "min": round(float(np.min(finite)), 3) if finite else None,
            "count": len(values)}


def _remove_previous(out: str) -> None:
    """A run that does not match the existing output first removes its manifest (so nothing looks finished)."""
    for name in (core_manifest.MANIFEST_FILE, INDEX_FILE, REPORT_FILE):
        storage.delete(storage.join(out, name))
    storage.delete_prefix(storage.join(out, SHARD_FOLDER))


def shard(
    annotations: str | Path,
    out: str | Path,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Shard the clips of `annotations` into `out` (local folder or s3:// prefix). Returns a summary."""
    annotations, out = str(annotations), str(out).rstrip("/")
    cfg = load_data_config(preset, overrides).shard
    records, annotations_sha = read_annotations(annotations)
    _check_upstream(annotations, records, annotations_sha)
    tasks, unfit = plan(records, annotations, cfg)  # a malformed entry fails here, before the output is touched
    with lease.hold(out, owner=f"t2v data shard --annotations {annotations}") as held:
        return _shard(annotations, records, annotations_sha, tasks, unfit, out, cfg, preset, parent_run_id, held)


def _shard(annotations: str, records: list[Any], annotations_sha: str, tasks: list[ClipTask], unfit: list[dict],
           out: str, cfg: ShardConfig, preset: str, parent_run_id: str | None, held: lease.Lease) -> dict[str, Any]:
    inputs = {"annotations": {"uri": annotations, "sha256": annotations_sha}}
    shard_hash = config_hash(cfg)
    existing = core_manifest.is_complete(out, shard_hash, inputs)
    if existing is not None:
        log.info("shard: %s already holds this run's output; nothing to do", out)
        return {"manifest": storage.join(out, core_manifest.MANIFEST_FILE), "skipped": True,
                "samples": existing["num_samples"], "unfit": existing["num_unfit"]}
    _remove_previous(out)
    params = {"preset": str(preset), "annotations": annotations, "out": out, "clips": len(records),
              "shard": cfg.model_dump(mode="json")}
    with tracking.stage_run("shard", parent_run_id=parent_run_id, params=params) as run:
        started = time.perf_counter()
        buckets, psnrs = _write_shards(tasks, unfit, out, cfg)
        seconds = time.perf_counter() - started
        manifest, report = _finish(out, buckets, psnrs, unfit, cfg, preset, shard_hash, inputs, annotations_sha,
                                   run.run_id, seconds, len(records))
        run.log_metrics(report["metrics"])
        run.log_dict(report, REPORT_FILE)
        held.check()
        manifest_uri = core_manifest.write_manifest(out, manifest)  # LAST: the output is now complete
    return {"manifest": manifest_uri, "skipped": False, "samples": manifest["num_samples"], "unfit": len(unfit),
            "buckets": {b["name"]: b["samples"] for b in manifest["buckets"]}, "psnr": report["psnr"]["all"],
            "seconds": round(seconds, 3), "mlflow_run_id": run.run_id}


def _write_shards(tasks: list[ClipTask], unfit: list[dict], out: str, cfg: ShardConfig):
    """Encode clips in parallel (in annotation order, so shards are deterministic) and write bucket shards."""
    psnrs: dict[str, list[float]] = {}
    seen: dict[str, str] = {}
    with storage.staging_dir("t2v-shard-") as staging, ThreadPoolExecutor(cfg.upload_workers) as uploads:
        writers: dict[Bucket, _BucketShards] = {}
        encode = functools.partial(encode_clip, cfg=cfg)
        if cfg.workers:
            # Threads suffice: PyAV (libx264, decoders) and OpenCV release the GIL.
            pool = ThreadPoolExecutor(cfg.workers)
            # Bounded look-ahead: at most a few clips per worker are held in memory at a time.
            results = _bounded_map(pool, encode, tasks, 4 * cfg.workers)
        else:
            pool, results = None, map(encode, tasks)
        progress = Progress("shard", len(tasks), unit="clip", log=log)
        try:
            for done, (task, result) in enumerate(zip(tasks, results, strict=True), start=1):
                progress.update(done)
                if "unfit" in result:
                    unfit.append({"number": task.number, "path": task.path, "reason": result["unfit"]})
                    continue
                if result["key"] in seen:
                    unfit.append({"number": task.number, "path": task.path,
                                  "reason": f"duplicate of {seen[result['key']]} (same file and bucket)"})
                    continue
                seen[result["key"]] = task.path
                if task.bucket not in writers:
                    writers[task.bucket] = _BucketShards(task.bucket, Path(staging), out, cfg, uploads)
                writers[task.bucket].add(result["key"], result["mp4"], result["meta"])
                psnrs.setdefault(task.bucket.name, []).append(result["psnr"])
        finally:
            progress.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        for writer in writers.values():
            writer.close()
        buckets = []
        for bucket in sorted(writers):
            shards = [{"uri": relative, **future.result(), "keys": keys} for relative, keys, future in writers[bucket].finished]
            buckets.append((bucket, shards))
    unfit.sort(key=lambda item: item["number"])
    return buckets, psnrs


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, window: int):
    """Like pool.map, in order, but submits at most `window` items ahead of the consumer."""
    pending: list[Future] = []
    iterator = iter(items)
    for item in iterator:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    for item in iterator:
        yield pending.pop(0).result()
        pending.append(pool.submit(fn, item))
    for future in pending:
        yield future.result()


def _finish(out, buckets, psnrs, unfit, cfg, preset, shard_hash, inputs, annotations_sha, run_id, seconds, num_clips):
    index = {shard["uri"]: shard.pop("keys") for _, shards in buckets for shard in shards}
    files = {INDEX_FILE: _write_json(out, INDEX_FILE, {"shards": index})}
    bucket_entries = [{"name": bucket.name, "frames": bucket.frames, "height": bucket.height, "width": bucket.width,
                       "samples": sum(s["samples"] for s in shards), "shards": shards} for bucket, shards in buckets]
    num_samples = sum(b["samples"] for b in bucket_entries)
    total_bytes = sum(s["bytes"] for b in bucket_entries for s in b["shards"])
    all_psnr = [v for values in psnrs.values() for v in values]
    report = {
        "clips": num_clips, "samples": num_samples, "unfit": unfit, "seconds": round(seconds, 3),
        "bytes": total_bytes, "buckets": {b["name"]: b["samples"] for b in bucket_entries},
        "psnr": {"all": _psnr_summary(all_psnr), **{name: _psnr_summary(v) for name, v in sorted(psnrs.items())}},
    }
    metrics = {"samples": num_samples, "unfit": len(unfit), "shards": len(index), "bytes": total_bytes,
               "clips_per_second": num_samples / max(seconds, 1e-9)}
    if report["psnr"]["all"]["mean"] is not None:
        metrics |= {"psnr_mean": report["psnr"]["all"]["mean"], "psnr_min": report["psnr"]["all"]["min"]}
    metrics |= {f"bucket_samples/{name}": count for name, count in report["buckets"].items()}
    report["metrics"] = metrics
    files[REPORT_FILE] = _write_json(out, REPORT_FILE, report)
    for entry in bucket_entries:
        for shard_entry in entry["shards"]:
            files[shard_entry["uri"]] = core_manifest.file_entry(shard_entry["uri"], shard_entry["sha256"], shard_entry["bytes"])
    manifest = core_manifest.build_manifest(
        stage="shard", preset=str(preset), config=cfg.model_dump(mode="json"), config_hash=shard_hash,
        inputs=inputs, files=files, mlflow_run_id=run_id,
        format="webdataset", annotations_sha256=annotations_sha, train_fps=cfg.train_fps, num_samples=num_samples,
        num_unfit=len(unfit), index={"uri": INDEX_FILE, "sha256": files[INDEX_FILE]["sha256"]}, buckets=bucket_entries,
    )
    jsonschema.validate(manifest, manifest_schema())  # what we write, we can read back
    return manifest, report


def _write_json(out: str, name: str, obj: Any) -> dict[str, Any]:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return core_manifest.file_entry(name, storage.write_bytes(storage.join(out, name), data), len(data))
