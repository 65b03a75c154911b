"""Shards -> manifest -> loader round trip: shapes, captions, cover, ranks x workers, exact resume."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.loader import BucketLoader, LoaderConfig
from components.data.video_io import decode_video

CONFIG = LoaderConfig(batch_tokens=160, max_batch_size=2, shuffle_shards=2, seed=7)


def _contents(out: Path) -> dict[str, dict]:
    """key -> {"meta", "mp4"} over every shard."""
    found: dict[str, dict] = {}
    for tar_path in (out / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                found.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return found


def _ids_to_keys(loader: BucketLoader, out: Path) -> list[str]:
    """Keys in the loader's global id order (selected buckets, their shards, tar order)."""
    index = json.loads((out / "index.json").read_text())["shards"]
    return [key for uri in loader.shard_uris for key in index[str(Path(uri).relative_to(out))]]


def _epoch(loader: BucketLoader) -> list[tuple[tuple, list[str]]]:
    return [(batch["bucket"], batch["key"]) for batch in loader]


def test_round_trip_shapes_captions_and_cover(many_shards):
    out, result, _ = many_shards
    contents = _contents(out)
    assert len(contents) == result["samples"] == 48
    loader = BucketLoader(out, CONFIG, rank=0, world_size=1)
    keys_by_id = _ids_to_keys(loader, out)
    checked_pixels = False
    for epoch in range(2):
        served = []
        for batch in loader:
            frames, height, width = batch["bucket"]
            size = loader.batch_sizes[f"{frames}x{height}x{width}"]
            assert batch["video"].shape == (size, 3, frames, height, width) and batch["video"].dtype == torch.float32
            assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0
            for key, caption in zip(batch["key"], batch["caption"], strict=True):
                meta = json.loads(contents[key]["json"])
                assert caption in meta["captions"] and meta["bucket"]["name"] == f"{frames}x{height}x{width}"
            if not checked_pixels:
                expected = decode_video(contents[batch["key"][0]]["mp4"])  # (T, H, W, 3) uint8
                got = ((batch["video"][0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
                assert np.array_equal(got, expected)
                checked_pixels = True
            served += batch["key"]
        plan = loader.plan(epoch)
        leftover = [keys_by_id[i] for b in range(len(plan.sequences)) for i in plan.leftover(b)]
        assert len(served) == len(set(served))
        assert sorted(served + leftover) == sorted(contents)  # everything is served or reported as left over
        for b, layout in enumerate(loader.schedule.buckets):
            assert len(plan.leftover(b)) < layout.batch_size  # at most one global batch's remainder (1 rank)


def test_two_ranks_two_workers_same_bucket_and_disjoint(many_shards):
    out, _, _ = many_shards
    config = CONFIG.model_copy(update={"num_workers": 2})
    streams = [_epoch(BucketLoader(out, config, rank=rank, world_size=2)) for rank in range(2)]
    assert len(streams[0]) == len(streams[1]) > 5
    served = []
    for (bucket0, keys0), (bucket1, keys1) in zip(*streams, strict=True):
        assert bucket0 == bucket1  # every global step: one bucket on every rank
        served += keys0 + keys1
    assert len(served) == len(set(served))
    loader = BucketLoader(out, config, rank=0, world_size=2)
    plan = loader.plan(0)
    keys_by_id = _ids_to_keys(loader, out)
    leftover = {keys_by_id[i] for b in range(len(plan.sequences)) for i in plan.leftover(b)}
    assert set(served) | leftover == set(_contents(out)) and not set(served) & leftover
    # The number of workers does not change the stream.
    assert streams[0] == _epoch(BucketLoader(out, CONFIG, rank=0, world_size=2))


def test_resume_mid_epoch_continues_exactly(many_shards):
    out, _, _ = many_shards
    config = CONFIG.model_copy(update={"num_workers": 2})
    uninterrupted = BucketLoader(out, config, rank=1, world_size=2)
    expected = _epoch(uninterrupted) + _epoch(uninterrupted)
    assert [keys for _, keys in expected[: len(expected) // 2]] != [keys for _, keys in expected[len(expected) // 2 :]]

    first = BucketLoader(out, config, rank=1, world_size=2)
    got = []
    for batch in first:
        got.append((batch["bucket"], batch["key"]))
        if len(got) == 5:
            break
    state = first.state_dict()
    assert state == {"epoch": 0, "step": 5}
    resumed = BucketLoader(out, config, rank=1, world_size=2)
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert got == expected
    assert resumed.state_dict() == {"epoch": 2, "step": 0}


def test_bucket_filter_and_bad_names(many_shards):
    out, _, _ = many_shards
    videos_only = BucketLoader(out, CONFIG.model_copy(update={"min_frames": 2}), rank=0, world_size=1)
    assert all(b.frames > 1 for b in videos_only.bucket_shapes)
    assert all(batch["bucket"][0] > 1 for batch in videos_only)
    with pytest.raises(ValueError, match="not in"):
        BucketLoader(out, CONFIG.model_copy(update={"batch_size_overrides": {"5x8x8": 1}}))
    with pytest.raises(ValueError, match="outside world size"):
        BucketLoader(out, CONFIG, rank=2, world_size=2)


def test_small_buckets_get_smaller_batches_not_starved(many_shards):
    out, _, _ = many_shards
    big = CONFIG.model_copy(update={"max_batch_size": 8, "batch_tokens": 10_000})
    shrunk = BucketLoader(out, big, rank=0, world_size=2)
    starved = BucketLoader(out, big.model_copy(update={"shrink_small_buckets": False}), rank=0, world_size=2)
    samples = {layout.name: layout.num_samples for layout in shrunk.schedule.buckets}
    for name, size in shrunk.batch_sizes.items():
        assert size == max(1, min(8, samples[name] // 2))
    assert {int(b) for b in shrunk.plan().step_bucket} == set(range(len(samples)))  # every bucket is served
    assert len(set(starved.plan().step_bucket.tolist())) < len(samples)


def test_truncated_shard_is_named(many_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(many_shards[0], out)
    loader = BucketLoader(out, CONFIG, rank=0, world_size=1)
    victim = Path(loader.shard_uris[0])
    with tarfile.open(victim) as tar:  # keep only the first sample of the shard
        members = tar.getmembers()[:2]
        blobs = [tar.extractfile(m).read() for m in members]
    with tarfile.open(victim, "w") as tar:
        for member, blob in zip(members, blobs, strict=True):
            tar.addfile(member, io.BytesIO(blob))
    with pytest.raises(ValueError, match=victim.name):
        for _ in loader:
            pass


def _copy_with(many_shards, tmp_path, edit) -> tuple[Path, BucketLoader, Path]:
    """A copy of the shards, the loader over it, and the first shard the loader reads, changed by `edit`."""
    out = tmp_path / "copy"
    shutil.copytree(many_shards[0], out)
    loader = BucketLoader(out, CONFIG, rank=0, world_size=1)
    first_step_ids = loader.plan().batch(0, 0)
    victim = Path(loader.shard_uris[int(np.searchsorted(loader.shard_offsets, first_step_ids[0], side="right") - 1)])
    edit(out, victim)
    return out, loader, victim


def _flip_payload_byte(out: Path, victim: Path) -> None:
    data = bytearray(victim.read_bytes())
    data[1500] ^= 0xFF  # inside the first sample's mp4: the tar still parses
    victim.write_bytes(bytes(data))


def test_flipped_byte_in_a_shard_fails_naming_it_before_its_samples_are_used(many_shards, tmp_path):
    _, loader, victim = _copy_with(many_shards, tmp_path, _flip_payload_byte)
    with pytest.raises(ValueError, match=rf"shard .*{victim.name}: sha256 [0-9a-f]{{64}} does not match the manifest"):
        next(iter(loader))  # the very first batch needs this shard: nothing from it is served


def test_manifest_with_a_wrong_shard_checksum_fails_naming_the_shard(many_shards, tmp_path):
    def wrong_checksum(out: Path, victim: Path) -> None:
        manifest = json.loads((out / "manifest.json").read_text())
        for bucket in manifest["buckets"]:
            for entry in bucket["shards"]:
                if entry["uri"] == f"shards/{victim.name}":
                    entry["sha256"] = "0" * 64
        (out / "manifest.json").write_text(json.dumps(manifest))

    out, _, victim = _copy_with(many_shards, tmp_path, wrong_checksum)
    with pytest.raises(ValueError, match=rf"{victim.name}: sha256 .* manifest's 0000"):
        next(iter(BucketLoader(out, CONFIG, rank=0, world_size=1)))


def test_flipped_tar_header_names_shard_and_sample(many_shards, tmp_path):
    """A flipped bit in a member name turned `.mp4` into another suffix: a bare KeyError: 'mp4' before."""
    def rename_member(out: Path, victim: Path) -> None:
        with tarfile.open(victim) as tar:
            offsets = [member.offset for member in tar.getmembers() if member.name.endswith(".mp4")]
        data = bytearray(victim.read_bytes())
        for offset in offsets:  # every .mp4 member becomes .mq4, with a header checksum that agrees
            header = data[offset:offset + 512]
            name_end = header.index(b".mp4")
            header[name_end:name_end + 4] = b".mq4"
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header)
            data[offset:offset + 512] = header
        victim.write_bytes(bytes(data))

    out, _, victim = _copy_with(many_shards, tmp_path, rename_member)
    checked = BucketLoader(out, CONFIG, rank=0, world_size=1)
    with pytest.raises(ValueError, match=rf"shard .*{victim.name}"):
        next(iter(checked))
    unchecked = BucketLoader(out, CONFIG.model_copy(update={"verify_shards": False}), rank=0, world_size=1)
    with pytest.raises(ValueError, match=rf"shard .*{victim.name}: sample [0-9a-f]+ has files \['json', 'mq4'\]"):
        next(iter(unchecked))
