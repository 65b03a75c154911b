"""The data component's public read API for training: bucketed batches streamed from WebDataset shards.

    loader = BucketLoader("s3://bucket/shards/manifest.json", LoaderConfig(num_workers=4))
    for batch in loader:  # one epoch, from where the loader stands
        batch["video"]    # (B, C, T, H, W) float32 in [-1, 1]; images have T = 1
        batch["caption"], batch["key"], batch["bucket"]  # list[str], list[str], (frames, height, width)
        batch["meta"]     # list[dict]: each sample's parsed .json
    state = loader.state_dict()  # {"epoch", "step"}: load_state_dict(state) resumes at the next sample

What a sample carries decides what its batch holds: an `.mp4` member becomes `video` (decoded, checked
against the bucket's shape); tensor members become stacked tensors of the same name, in their stored
dtype: each tensor of a `.safetensors` member under its own name, and `<name>.npy` under `<name>`
(stages that write precomputed features, e.g. DiT latents, use these). `.json` is required (captions).

A shard entry of the manifest may list `positions`: the tar positions of the samples it contributes, in
their order (default: all of them). Several entries, of other buckets or splits, can then share one tar.
An optional `transform(sample, bucket)` runs on every decoded sample before it is checked and stacked
(e.g. to cut a source clip to the bucket's size); it must be picklable when `num_workers` > 0.

Every rank computes the same global schedule (`components.data.sampler`) from the manifest, so at each
global step all ranks hold batches of one bucket (equal shapes; no rank waits for another), no sample
is read twice in an epoch, and resume needs only (epoch, step). With `num_workers = k`, worker w builds
whole batches for steps start + w, start + w + k, ...; the main process puts them back in step order,
so the stream is the same for any k. Shards are streamed (local files, or S3 through boto3 without a
full download first); a worker opens only the shards that hold its samples, in the order it needs them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from components.core import storage
from components.data.buckets import Bucket
from components.data.config import LoaderConfig
from components.data.sampler import BucketLayout, EpochPlan, Schedule, latent_tokens
from components.data.shard_manifest import (
    HashingReader,
    iter_samples,
    manifest_uri,
    open_shard,
    read_shard_manifest,
    resolve,
)
from components.data.video_io import decode_video

__all__ = ["BucketLoader", "LoaderConfig", "batch_size_for", "build_loader"]

log = logging.getLogger(__name__)

# A decoded sample: "__key__", "__url__", "meta" (the parsed .json), "video" (T, H, W, 3) uint8 when the
# sample has an .mp4, and its tensors by name. A transform maps it, with the bucket (frames, height, width),
# to another such sample.
Transform = Callable[[dict[str, Any], tuple[int, int, int]], dict[str, Any]]


def batch_size_for(bucket: Bucket, config: LoaderConfig) -> int:
    """Per-rank batch size of a bucket: an explicit override, else the token budget over tokens per sample."""
    if bucket.name in config.batch_size_overrides:
        return int(config.batch_size_overrides[bucket.name])
    tokens = latent_tokens(bucket.frames, bucket.height, bucket.width, config.vae_stride, config.patch_size)
    return int(min(config.max_batch_size, max(1, config.batch_tokens // tokens)))


def _selected(bucket: Bucket, config: LoaderConfig) -> bool:
    if config.buckets is not None and bucket.name not in config.buckets:
        return False
    return bucket.frames >= config.min_frames and (config.max_frames is None or bucket.frames <= config.max_frames)


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if initialised else 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class BucketLoader:
    """Iterable over one epoch of this rank's batches at a time; see the module docstring."""

    def __init__(self, manifest: str | Path, config: LoaderConfig | None = None,
                 rank: int | None = None, world_size: int | None = None, transform: Transform | None = None):
        self.config = config or LoaderConfig()
        self.transform = transform
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        self.manifest_uri = manifest_uri(manifest)
        manifest_data = read_shard_manifest(self.manifest_uri)
        unknown = set(self.config.batch_size_overrides) | set(self.config.buckets or [])
        unknown -= {b["name"] for b in manifest_data["buckets"]}
        if unknown:
            raise ValueError(f"loader config names buckets not in {self.manifest_uri}: {sorted(unknown)}")
        self.shard_uris: list[str] = []
        self.shard_sha256s: list[str] = []
        self.shard_positions: list[list[int] | None] = []
        shard_sizes: list[int] = []
        layouts, self.bucket_shapes = [], []
        for entry in manifest_data["buckets"]:
            bucket = Bucket(entry["frames"], entry["height"], entry["width"])
            if not _selected(bucket, self.config):
                continue
            sizes = np.array([s["samples"] for s in entry["shards"]], np.int64)
            for shard in entry["shards"]:
                if "positions" in shard and len(shard["positions"]) != shard["samples"]:
                    raise ValueError(f"{self.manifest_uri}: shard {shard['uri']} of bucket {bucket.name} lists "
                                     f"{len(shard['positions'])} positions but 'samples' is {shard['samples']}")
            batch_size = batch_size_for(bucket, self.config)
            if self.config.shrink_small_buckets and bucket.name not in self.config.batch_size_overrides:
                batch_size = max(1, min(batch_size, int(sizes.sum()) // self.world_size))
            layouts.append(BucketLayout(bucket.name, sizes, int(sum(shard_sizes)), batch_size))
            self.bucket_shapes.append(bucket)
            self.shard_uris += [resolve(self.manifest_uri, s["uri"]) for s in entry["shards"]]
            self.shard_sha256s += [s["sha256"] for s in entry["shards"]]
            self.shard_positions += [s.get("positions") for s in entry["shards"]]
            shard_sizes += sizes.tolist()
        if not layouts:
            raise ValueError(f"no bucket of {self.manifest_uri} passes the loader's bucket filter")
        self.shard_offsets = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
        self.schedule = Schedule(layouts, self.world_size, self.config.seed, self.config.shuffle_shards,
                                 self.config.remainder, self.config.rank_layout)
        for layout in layouts:
            if layout.num_samples < layout.batch_size * self.world_size:
                log.warning("bucket %s: %d samples < one global batch (%d x %d ranks): never served",
                            layout.name, layout.num_samples, layout.batch_size, self.world_size)
        self.epoch, self.step = 0, 0
        self._plan: EpochPlan | None = None

    # ----------------------------------------------------------------- schedule and state

    @property
    def batch_sizes(self) -> dict[str, int]:
        return {layout.name: layout.batch_size for layout in self.schedule.buckets}

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = self.schedule.epoch(epoch)
        return self._plan

    def __len__(self) -> int:
        """Global steps per epoch (the same on every rank)."""
        return len(self.plan())

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """The position of the next batch: (epoch, step). A finished epoch reads as the next one's start."""
        if self.step >= len(self):
            return {"epoch": self.epoch + 1, "step": 0}
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if not 0 <= self.step <= len(self):
            raise ValueError(f"loader state step {self.step} is outside epoch {self.epoch} ({len(self)} steps)")

    # ----------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan()
        stream = _StepStream(plan, self.rank, self.step, self.shard_uris, self.shard_sha256s, self.shard_offsets,
                             self.bucket_shapes, self.config.seed, self.config.verify_shards, self.shard_positions,
                             self.transform)
        if self.config.num_workers:
            source = iter(DataLoader(stream, batch_size=None, num_workers=self.config.num_workers))
        else:
            source = iter(stream)
        pending: dict[int, dict[str, Any]] = {}
        for step, batch in source:
            pending[step] = batch
            # DataLoader already returns workers' outputs round-robin, i.e. in step order; the buffer
            # makes the order a guarantee rather than an assumption.
            while self.step in pending:
                out = pending.pop(self.step)
                out["bucket"] = tuple(out["bucket"])  # DataLoader's worker transfer turns tuples into lists
                self.step += 1
                yield out
        assert not pending and self.step == len(plan), (sorted(pending), self.step, len(plan))
        self.epoch, self.step = self.epoch + 1, 0


def build_loader(manifest: str | Path, config: LoaderConfig | None = None, rank: int | None = None,
                 world_size: int | None = None, transform: Transform | None = None) -> BucketLoader:
    return BucketLoader(manifest, config, rank, world_size, transform)


class _StepStream(IterableDataset):
    """(step, batch) for this worker's steps of one epoch, reading only the shards that hold its samples."""

    def __init__(self, plan: EpochPlan, rank: int, start_step: int, shard_uris: list[str], shard_sha256s: list[str],
                 shard_offsets: np.ndarray, bucket_shapes: list[Bucket], seed: int, verify_shards: bool,
                 shard_positions: list[list[int] | None], transform: Transform | None):
        super().__init__()
        self.plan, self.rank, self.start_step, self.seed = plan, rank, start_step, seed
        self.shard_uris, self.shard_sha256s, self.shard_offsets = shard_uris, shard_sha256s, shard_offsets
        self.bucket_shapes, self.verify_shards = bucket_shapes, verify_shards
        self.shard_positions, self.transform = shard_positions, transform

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            storage.reset_clients()  # a boto3 client must not cross a fork
        steps = list(range(self.start_step + worker, len(self.plan), num_workers))
        needs = [self.plan.batch(step, self.rank) for step in steps]
        if not needs:
            return
        wanted = np.concatenate(needs)
        wanted_set = set(wanted.tolist())
        shard_of = np.searchsorted(self.shard_offsets, wanted, side="right") - 1
        _, first_need = np.unique(shard_of, return_index=True)
        shard_order = iter(shard_of[np.sort(first_need)].tolist())  # shards in the order their samples are needed
        buffer: dict[int, dict[str, Any]] = {}
        for step, ids in zip(steps, needs, strict=True):
            for sample_id in ids.tolist():
                while sample_id not in buffer:
                    shard = next(shard_order, None)
                    if shard is None:
                        owner = int(np.searchsorted(self.shard_offsets, sample_id, side="right") - 1)
                        raise ValueError(f"shard {self.shard_uris[owner]} lacks sample {sample_id - self.shard_offsets[owner]} "
                                         "that the manifest promises (check it with `t2v data verify`)")
                    self._read_shard(shard, wanted_set, buffer)
            yield step, self._collate(step, [buffer.pop(i) for i in ids.tolist()])

    def _read_shard(self, shard: int, wanted: set[int], buffer: dict[int, dict[str, Any]]) -> None:
        """Read one whole shard, hashing it as it streams; its samples reach the buffer only once the shard's
        sha256 matches the manifest (a flipped byte anywhere in it, or a wrong manifest, fails here)."""
        uri, first = self.shard_uris[shard], int(self.shard_offsets[shard])
        positions = self.shard_positions[shard]
        # Tar position -> this entry's ordinal (the entry may take a subset of the tar, in its own order).
        ordinal = None if positions is None else {position: n for n, position in enumerate(positions)}
        found: dict[int, dict[str, Any]] = {}
        try:
            with open_shard(uri) as stream:
                reader = HashingReader(stream)
                for position, sample in enumerate(iter_samples(reader)):
                    number = position if ordinal is None else ordinal.get(position)
                    if number is not None and first + number in wanted:
                        found[first + number] = {**sample, "__url__": uri}
                reader.drain()
        except storage.StorageError:
            raise
        except Exception as exc:  # a garbled tar: name the shard, not only the tar module's complaint
            raise ValueError(f"shard {uri}: unreadable ({type(exc).__name__}: {exc}); "
                             "check the shards with `t2v data verify`") from None
        actual = reader.digest.hexdigest()
        if self.verify_shards and actual != self.shard_sha256s[shard]:
            raise ValueError(f"shard {uri}: sha256 {actual} does not match the manifest's {self.shard_sha256s[shard]} "
                             "(the shard or the manifest changed after sharding); check them with `t2v data verify`")
        buffer.update(found)

    def _collate(self, step: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
        bucket = self.bucket_shapes[int(self.plan.step_bucket[step])]
        shape = (bucket.frames, bucket.height, bucket.width)
        decoded = [_decode_sample(sample) for sample in samples]
        if self.transform is not None:
            decoded = [self.transform(sample, shape) for sample in decoded]
        batch: dict[str, Any] = {"caption": [], "key": [], "meta": []}
        videos = []
        tensors: dict[str, list[torch.Tensor]] = {}
        for sample in decoded:
            where = f"shard {sample['__url__']}: sample {sample['__key__']}"
            if "video" in sample:
                if sample["video"].shape[:3] != shape:
                    raise ValueError(f"{where} has shape {sample['video'].shape[:3]}, bucket {bucket.name} says otherwise")
                videos.append(sample["video"])
            for name, tensor in sample.items():
                if isinstance(tensor, torch.Tensor):
                    tensors.setdefault(name, []).append(tensor)
            batch["caption"].append(self._caption(sample["meta"]["captions"], sample["__key__"]))
            batch["key"].append(sample["__key__"])
            batch["meta"].append(sample["meta"])
        if videos:
            if len(videos) != len(decoded):
                raise ValueError(f"bucket {bucket.name}: some samples of a batch have a video and some do not")
            video = torch.empty(len(videos), 3, *shape)  # (B, C, T, H, W)
            for row, frames in zip(video, videos, strict=True):
                row.copy_(torch.from_numpy(frames).permute(3, 0, 1, 2))  # (T, H, W, C) uint8 -> (C, T, H, W) float
            batch["video"] = video.mul_(2.0 / 255.0).sub_(1.0)  # contiguous, in place: [0, 255] -> [-1, 1]
        for name, values in tensors.items():
            if len(values) != len(decoded) or len({tuple(v.shape) for v in values}) != 1:
                raise ValueError(f"bucket {bucket.name}: tensor '{name}' is missing from some samples of a batch or "
                                 f"differs in shape ({sorted({tuple(v.shape) for v in values})})")
            batch[name] = torch.stack(values)  # (B, ...)
        return {**batch, "bucket": shape, "epoch": self.plan.epoch, "step": step}

    def _caption(self, captions: list[str], key: str) -> str:
        """One caption per sample and epoch, chosen deterministically (the reference picks at random, §5.1)."""
        if len(captions) == 1:
            return captions[0]
        digest = hashlib.sha256(f"{self.seed}/{self.plan.epoch}/{key}".encode()).digest()
        return captions[int.from_bytes(digest[:8], "little") % len(captions)]


def _decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A tar sample's members decoded (see `Transform`); ValueError naming the sample when one is unreadable."""
    where = f"shard {sample['__url__']}: sample {sample['__key__']}"
    members = sorted(k for k in sample if not k.startswith("__"))
    if "json" not in sample or not ({"mp4", "safetensors"} & sample.keys() or any(m.endswith(".npy") for m in members)):
        raise ValueError(f"{where} has files {members}, not .json with .mp4, .safetensors or .npy")
    decoded: dict[str, Any] = {"__key__": sample["__key__"], "__url__": sample["__url__"]}
    try:  # bad JSON, or bytes no decoder takes: name the sample, whatever the library
        decoded["meta"] = json.loads(sample["json"])
        if "mp4" in sample:
            decoded["video"] = decode_video(sample["mp4"])  # (T, H, W, 3) uint8
        if "safetensors" in sample:
            decoded.update(load_safetensors(sample["safetensors"]))
        for member in members:
            if member.endswith(".npy"):
                decoded[member.removesuffix(".npy")] = torch.from_numpy(np.load(io.BytesIO(sample[member])))
    except Exception as exc:
        raise ValueError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from None
    return decoded
