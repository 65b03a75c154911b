"""The loader beyond video: tensor members (.npy, .safetensors), shard entries taking tar positions, and
a per-sample transform, on shards written by another stage in the manifest's format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from safetensors.torch import save as save_safetensors

from components.core import manifest as core_manifest
from components.core import storage
from components.data.loader import BucketLoader, LoaderConfig

ONE_AT_A_TIME = LoaderConfig(batch_tokens=1, max_batch_size=1, shuffle_shards=1)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write(folder: Path, entries: list[dict]) -> Path:
    """One tar of four feature samples; a manifest whose bucket "1x16x16" takes `entries` of it."""
    folder.mkdir(parents=True, exist_ok=True)
    with webdataset.TarWriter(str(folder / "features.tar"), encoder=False) as tar:
        for number in range(4):
            tar.write({"__key__": f"s{number}", "json": json.dumps({"captions": [f"caption {number}"]}).encode(),
                       "feature.npy": _npy(np.full((2, 3), number, np.float32)),
                       "safetensors": save_safetensors({"latent": torch.full((4, 1, 2, 2), float(number))})})
    tar_bytes = (folder / "features.tar").read_bytes()
    shard = {"uri": "features.tar", "bytes": len(tar_bytes), "sha256": storage.sha256_bytes(tar_bytes)}
    shards = [{**shard, **entry} for entry in entries]
    bucket = {"name": "1x16x16", "frames": 1, "height": 16, "width": 16,
              "samples": sum(s["samples"] for s in shards), "shards": shards}
    manifest = core_manifest.build_manifest(
        stage="features", preset="test", config={}, config_hash="0" * 64, inputs={}, files={}, format="webdataset",
        train_fps=24, num_samples=bucket["samples"], num_unfit=0, index={"uri": "index.json", "sha256": "0" * 64},
        buckets=[bucket])
    storage.write_json(folder / "manifest.json", manifest)
    return folder / "manifest.json"


def test_tensor_members_are_stacked_and_positions_select(tmp_path):
    manifest = _write(tmp_path, [{"samples": 2, "positions": [3, 1]}, {"samples": 1, "positions": [0]}])
    batches = list(BucketLoader(manifest, ONE_AT_A_TIME, rank=0, world_size=1))
    assert sorted(key for b in batches for key in b["key"]) == ["s0", "s1", "s3"]  # s2 is in no entry
    for batch in batches:
        number = int(batch["key"][0][1:])
        assert "video" not in batch and batch["caption"] == [f"caption {number}"]
        assert batch["meta"] == [{"captions": [f"caption {number}"]}]
        assert batch["feature"].shape == (1, 2, 3) and bool((batch["feature"] == number).all())
        assert batch["latent"].shape == (1, 4, 1, 2, 2) and bool((batch["latent"] == number).all())
    # The whole tar, batched: one tensor per member name.
    [batch] = BucketLoader(_write(tmp_path / "all", [{"samples": 4}]), LoaderConfig(batch_tokens=64, max_batch_size=4),
                           rank=0, world_size=1)
    assert batch["latent"].shape == (4, 4, 1, 2, 2) and sorted(batch["key"]) == ["s0", "s1", "s2", "s3"]


def _tag(sample: dict, bucket: tuple[int, int, int]) -> dict:
    return {**sample, "bucket_frames": torch.tensor(bucket[0]), "__key__": sample["__key__"].upper()}


def test_transform_sees_each_sample_and_its_bucket(tmp_path):
    manifest = _write(tmp_path, [{"samples": 4}])
    for workers in (0, 1):  # a module-level function is picklable into a worker process
        config = LoaderConfig(batch_tokens=1, max_batch_size=2, num_workers=workers)
        batches = list(BucketLoader(manifest, config, rank=0, world_size=1, transform=_tag))
        assert sorted(key for b in batches for key in b["key"]) == ["S0", "S1", "S2", "S3"]
        assert all(b["bucket_frames"].tolist() == [1] * len(b["key"]) for b in batches)


def test_positions_must_match_the_sample_count(tmp_path):
    manifest = _write(tmp_path, [{"samples": 3, "positions": [0, 1]}])
    with pytest.raises(ValueError, match="shard features.tar of bucket 1x16x16 lists 2 positions but 'samples' is 3"):
        BucketLoader(manifest, ONE_AT_A_TIME, rank=0, world_size=1)


def test_only_the_shard_stage_must_name_its_annotations(tmp_path):
    from components.data.shard_manifest import read_shard_manifest

    manifest = _write(tmp_path, [{"samples": 4}])
    assert read_shard_manifest(manifest)["stage"] == "features"
    data = json.loads(manifest.read_text())
    data["stage"] = "shard"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="invalid shard manifest at '<root>': 'annotations_sha256' is a required"):
        read_shard_manifest(manifest)
