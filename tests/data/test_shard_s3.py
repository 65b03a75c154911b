"""S3 round trip on a real local endpoint: clips and annotations on S3 -> shards on S3 -> streamed batches."""

from __future__ import annotations

import json
from pathlib import Path

from components.core import storage
from components.data.loader import BucketLoader, LoaderConfig
from components.data.shard import shard
from components.data.verify import verify

TEST_PRESET = str(Path(__file__).with_name("shard_preset.yaml"))  # the shard tests' own buckets

pytest_plugins = ["tests.data.shard_fixtures", "tests.data.s3_fixtures"]  # fixtures


def test_s3_shard_verify_and_stream(tracking_home, mixed_clips, shard_s3_bucket, monkeypatch):
    root = f"s3://{shard_s3_bucket}/raw"
    for path in sorted(Path(mixed_clips).parent.rglob("*")):
        if path.is_file():
            storage.put_file(path, storage.join(root, str(path.relative_to(Path(mixed_clips).parent))))
    out = f"s3://{shard_s3_bucket}/shards/run1"
    result = shard(f"{root}/annotations.json", out, preset=TEST_PRESET, overrides=["shard.shard_max_samples=2"])
    assert result["samples"] == 11 and result["psnr"]["min"] >= 40.0
    names = storage.list_files(out)
    assert f"{out}/manifest.json" in names and sum(n.endswith(".tar") for n in names) >= 8
    assert verify(f"{out}/manifest.json")["ok"]
    assert shard(f"{root}/annotations.json", out, preset=TEST_PRESET, overrides=["shard.shard_max_samples=2"])["skipped"]

    # Shards are streamed through storage.open_stream (boto3), never downloaded whole first.
    opened = []
    real_open_stream = storage.open_stream
    monkeypatch.setattr(storage, "open_stream", lambda uri: opened.append(uri) or real_open_stream(uri))
    loader = BucketLoader(out, LoaderConfig(batch_tokens=64, max_batch_size=1), rank=0, world_size=1)
    keys = [key for batch in loader for key in batch["key"]]
    assert len(keys) == len(set(keys)) == 11
    assert opened and all(uri.startswith(f"{out}/shards/") for uri in opened)
    index = json.loads(storage.read_bytes(f"{out}/index.json"))["shards"]
    assert sorted(keys) == sorted(k for shard_keys in index.values() for k in shard_keys)

    # A corrupted object is named by verify.
    victim = next(n for n in names if n.endswith(".tar"))
    storage.write_bytes(victim, storage.read_bytes(victim)[:-512] + b"\0" * 512 + b"x")
    problems = verify(out)["problems"]
    assert problems and all(victim in problem for problem in problems)
