"""Which source clip goes to which latent bucket, and how it is cut: the layout shared by both encode modes.

Every sample of a source shard bucket has that bucket's shape, so whether it fills a target bucket is
decided per bucket. A target bucket's samples are the train (or val) samples of every fitting source
shard, in tar order, in entries of at most `shard_max_samples`. Each entry is written as one latent shard
(cached mode), or kept as a reference to its source tar with the tar `positions` it takes (online mode).
Both give the loader the same shard sizes, hence the same schedule and the same batches.

The split is decided by a hash of the source key, so every bucket made from one clip lands on the same
side, and a re-run splits the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cv2
import numpy as np
import torch

from components.core import storage
from components.dit.encode_config import EncodeConfig

SPLITS = ("train", "val")
PIXELS = "pixels:"  # the name prefix of a cut clip in the cached mode's reader
# The latent folder (see encode.py): its stage name, and where each part lives in it.
STAGE = "latents"
SHARD_FOLDER = "shards"
VAL_FOLDER = "val"
TEXT_FOLDER = "text"
TEXT_ENCODER_FOLDER = "text_encoder"
INDEX_FILE = "index.json"


Dims = tuple[int, int, int]  # a bucket in pixels: (frames, height, width)


def bucket_name(dims: Dims) -> str:
    return "x".join(str(size) for size in dims)


def bucket_dims(name: str) -> Dims:
    frames, height, width = (int(part) for part in name.split("x"))
    return frames, height, width


def latent_key(source_key: str, bucket: Dims) -> str:
    """The key of one clip in one bucket (unique in the latent folder; picks its caption each epoch)."""
    return hashlib.sha256(f"{source_key}/{bucket_name(bucket)}".encode()).hexdigest()[:32]


def split_of(source_key: str, val_fraction: float) -> str:
    draw = int.from_bytes(hashlib.sha256(f"val/{source_key}".encode()).digest()[:8], "big") / 2**64
    return "val" if draw < val_fraction else "train"


def _crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(top, left, rows, columns) of the largest centred box of aspect rows/columns = `aspect`."""
    if height / width > aspect:  # taller than the target: crop rows
        rows, columns = max(1, round(width * aspect)), width
    else:
        rows, columns = height, max(1, round(height / aspect))
    return (height - rows) // 2, (width - columns) // 2, rows, columns


def fits(source: Dims, target: Dims, config: EncodeConfig) -> bool:
    """Whether a clip of `source` shape can fill `target`: enough frames, a near aspect, no big upscale."""
    (source_frames, source_height, source_width), (target_frames, target_height, target_width) = source, target
    if target_frames > 1 and source_frames < target_frames:
        return False
    source_aspect, target_aspect = source_height / source_width, target_height / target_width
    if max(source_aspect / target_aspect, target_aspect / source_aspect) > config.max_aspect_error + 1e-9:
        return False
    _, _, rows, _ = _crop_box(source_height, source_width, target_aspect)
    return rows * config.max_upscale >= target_height - 1e-6


def cut(video: np.ndarray, bucket: tuple[int, int, int]) -> np.ndarray:
    """A clip (T, H, W, 3) uint8 cut to `bucket`: video buckets take the first F frames (at the shards' train
    fps), image buckets the middle frame; then a centre crop to the bucket's aspect and an area resize
    (reference notes §5.3 crops and resizes too). Both encode modes cut with this one function."""
    frames, height, width = bucket
    middle = video.shape[0] // 2
    video = video[middle : middle + 1] if frames == 1 else video[:frames]
    top, left, rows, columns = _crop_box(video.shape[1], video.shape[2], height / width)
    video = video[:, top : top + rows, left : left + columns]
    if (rows, columns) != (height, width):
        interpolation = cv2.INTER_AREA if rows >= height else cv2.INTER_LINEAR
        video = np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in video])
    return np.ascontiguousarray(video)


def cut_to_bucket(sample: dict[str, Any], bucket: tuple[int, int, int]) -> dict[str, Any]:
    """Loader transform (online mode): a source sample cut to `bucket`, keyed as that bucket's latent sample."""
    meta = {**sample["meta"], "source_key": sample["__key__"]}
    return {**sample, "__key__": latent_key(sample["__key__"], bucket), "video": cut(sample["video"], bucket),
            "meta": meta}


def cut_to_targets(sample: dict[str, Any], bucket: tuple[int, int, int], targets_of: dict[str, list[str]]) -> dict[str, Any]:
    """Loader transform (cached mode): a source sample, decoded once, cut to every target its bucket fills;
    each cut a uint8 tensor (F, H, W, 3) named PIXELS + target name."""
    video = sample.pop("video")
    cuts = {PIXELS + name: torch.from_numpy(cut(video, bucket_dims(name))) for name in targets_of[bucket_name(bucket)]}
    return {**sample, **cuts}


def to_video(frames: torch.Tensor) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1], the very arithmetic of the data loader's batches."""
    return frames.permute(3, 0, 1, 2).float().mul_(2.0 / 255.0).sub_(1.0)


def plan(source_uri: str, source: dict[str, Any], index: dict[str, list[str]], config: EncodeConfig,
         compression: tuple[int, int]) -> dict[str, Any]:
    """The layout: per split, bucket entries in the shard manifest's format whose shards are references
    to source tars (absolute URIs, with `positions`); plus which targets and clips were left unfilled."""
    temporal, spatial = compression
    targets = sorted(bucket_dims(name) for name in config.targets)
    for target in targets:
        if (target[0] - 1) % temporal or target[1] % (2 * spatial) or target[2] % (2 * spatial):
            raise ValueError(f"encode.targets: {bucket_name(target)} does not fit the VAE: frames must be 1 + k*{temporal}, "
                             f"height and width multiples of {2 * spatial} (VAE {spatial} x DiT patch 2)")
    layout: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    targets_of: dict[str, list[str]] = {}  # source bucket -> the targets it fills
    for target in targets:
        entries: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        for bucket in source["buckets"]:
            if not fits((bucket["frames"], bucket["height"], bucket["width"]), target, config):
                continue
            targets_of.setdefault(bucket["name"], []).append(bucket_name(target))
            for shard in bucket["shards"]:
                keys = index.get(shard["uri"])
                if keys is None or len(keys) != shard["samples"]:
                    raise ValueError(f"{source_uri}: index lists {0 if keys is None else len(keys)} keys for shard "
                                     f"{shard['uri']}, the manifest {shard['samples']}")
                by_split: dict[str, list[int]] = {split: [] for split in SPLITS}
                for position, key in enumerate(keys):
                    by_split[split_of(key, config.val_fraction)].append(position)
                uri = _resolve(source_uri, shard["uri"])
                for split, positions in by_split.items():
                    for start in range(0, len(positions), config.shard_max_samples):
                        chunk = positions[start : start + config.shard_max_samples]
                        entries[split].append({"uri": uri, "samples": len(chunk), "bytes": shard["bytes"],
                                               "sha256": shard["sha256"], "positions": chunk,
                                               "keys": [keys[p] for p in chunk]})
        for split, shards in entries.items():
            if shards:
                frames, height, width = target
                layout[split].append({"name": bucket_name(target), "frames": frames, "height": height, "width": width,
                                      "samples": sum(s["samples"] for s in shards), "shards": shards})
    filled = {entry["name"] for split in SPLITS for entry in layout[split]}
    unfit_clips = sum(b["samples"] for b in source["buckets"] if b["name"] not in targets_of)
    return {**layout, "unfilled_targets": [bucket_name(t) for t in targets if bucket_name(t) not in filled],
            "unfit_clips": unfit_clips, "targets_of": targets_of}


def without_keys(buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bucket entries as a manifest holds them (the source keys are for the encoder and the index only)."""
    return [{**bucket, "shards": [{k: v for k, v in shard.items() if k != "keys"} for shard in bucket["shards"]]}
            for bucket in buckets]


def _resolve(manifest_uri: str, uri: str) -> str:
    """A shard URI of the source manifest, made absolute (relative ones are below the manifest's folder)."""
    if storage.is_s3(uri) or uri.startswith(("/", "file://")):
        return uri
    return storage.join(manifest_uri.rsplit("/", 1)[0], uri)
