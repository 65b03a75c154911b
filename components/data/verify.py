"""`t2v data verify MANIFEST`: re-read every shard and check its sha256, size, sample count and keys, and
that every sample has its bucket's shape (frames, height, width: decoded, not taken from its metadata)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.core import storage
from components.data.shard_manifest import (
    HashingReader,
    iter_samples,
    manifest_uri,
    open_shard,
    read_shard_manifest,
    resolve,
)
from components.data.video_io import decode_video

log = logging.getLogger(__name__)


def _sample_problem(uri: str, sample: dict[str, Any], bucket: dict[str, Any]) -> str | None:
    where = f"shard {uri}: sample {sample['__key__']}"
    if not {"mp4", "json"} <= sample.keys():
        return f"{where} lacks .mp4 or .json"
    shape = (bucket["frames"], bucket["height"], bucket["width"])
    try:
        frames = decode_video(sample["mp4"])  # (T, H, W, 3)
    except Exception as exc:  # whatever the decoder raises, it names this sample
        return f"{where}: video unreadable ({type(exc).__name__}: {exc})"
    if frames.shape[:3] != shape:
        return f"{where} is {'x'.join(map(str, frames.shape[:3]))}, not its bucket {bucket['name']}"
    return None


def _check_shard(uri: str, entry: dict[str, Any], expected_keys: list[str] | None, bucket: dict[str, Any]) -> list[str]:
    problems = []
    try:
        with open_shard(uri) as stream:
            reader = HashingReader(stream)
            keys = []
            for sample in iter_samples(reader):
                keys.append(sample["__key__"])
                problem = _sample_problem(uri, sample, bucket)
                if problem is not None:
                    problems.append(problem)
            reader.drain()
    except Exception as exc:  # a truncated or garbled tar: name the shard, keep checking the others
        return [f"shard {uri}: unreadable ({type(exc).__name__}: {exc})"]
    if reader.digest.hexdigest() != entry["sha256"]:
        problems.append(f"shard {uri}: sha256 {reader.digest.hexdigest()} != manifest {entry['sha256']}")
    if reader.size != entry["bytes"]:
        problems.append(f"shard {uri}: {reader.size} bytes != manifest {entry['bytes']}")
    if len(keys) != entry["samples"]:
        problems.append(f"shard {uri}: {len(keys)} samples != manifest {entry['samples']}")
    elif expected_keys is not None and keys != expected_keys:
        problems.append(f"shard {uri}: sample keys differ from the index")
    return problems


def verify(manifest: str | Path) -> dict[str, Any]:
    """Check every shard the manifest names. Returns {"ok", "shards", "samples", "problems"}."""
    uri = manifest_uri(manifest)
    data = read_shard_manifest(uri)
    problems: list[str] = []
    index_uri = resolve(uri, data["index"]["uri"])
    try:
        index = storage.read_json(index_uri, data["index"]["sha256"])["shards"]
    except storage.StorageError as exc:
        problems.append(f"index {index_uri}: {exc}")
        index = {}
    shards = samples = 0
    for bucket in data["buckets"]:
        if sum(s["samples"] for s in bucket["shards"]) != bucket["samples"]:
            problems.append(f"bucket {bucket['name']}: shard sample counts do not add up to {bucket['samples']}")
        for entry in bucket["shards"]:
            shards += 1
            samples += entry["samples"]
            problems += _check_shard(resolve(uri, entry["uri"]), entry, index.get(entry["uri"]), bucket)
    if samples != data["num_samples"]:
        problems.append(f"manifest: buckets hold {samples} samples, num_samples says {data['num_samples']}")
    for problem in problems:
        log.error("verify: %s", problem)
    return {"ok": not problems, "manifest": uri, "shards": shards, "samples": samples, "problems": problems}
