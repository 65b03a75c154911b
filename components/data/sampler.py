"""The global bucket schedule: which samples form which global batch, for every rank, in every epoch.

A pure function of (per-shard sample counts, per-bucket batch sizes, world size, seed, epoch), computed
with numpy in every process, so no rank or worker has to ask another what to read, and resuming needs
only (epoch, step).

Compared with Open-Sora Plan's LengthGroupedSampler (reference notes §5.5, §9.20-21): groups are whole
(frames, height, width) buckets, so a global batch never mixes shapes and never duplicates a sample;
buckets are drawn in proportion to their number of global batches; the order changes every epoch; the
last partial global batch of a bucket is carried to the front of the next epoch (or left out and
reported), never padded with duplicates.

Reading locality: a bucket's samples are ordered by shuffling its shards, then shuffling samples within
groups of `shuffle_shards` consecutive shards; each rank takes a contiguous run of that order, so a rank
opens only about 1/world_size of a bucket's shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BucketLayout:
    """One bucket as the schedule sees it: samples are global ids first_id .. first_id + sum(shard_sizes) - 1."""

    name: str
    shard_sizes: np.ndarray  # (num_shards,) samples per shard, in manifest order
    first_id: int
    batch_size: int  # per rank

    @property
    def num_samples(self) -> int:
        return int(self.shard_sizes.sum())


@dataclass
class EpochPlan:
    epoch: int
    world_size: int
    batch_sizes: np.ndarray  # (B,) per-rank batch size of each bucket
    num_batches: np.ndarray  # (B,) global batches of each bucket this epoch
    sequences: list[np.ndarray]  # per bucket: sample ids in serving order; the tail past the served part is left over
    step_bucket: np.ndarray  # (S,) bucket of each global step
    step_batch: np.ndarray  # (S,) index of that step's global batch within its bucket
    rank_layout: str = "runs"  # see LoaderConfig.rank_layout

    def __len__(self) -> int:
        return len(self.step_bucket)

    def leftover(self, bucket: int) -> np.ndarray:
        served = int(self.num_batches[bucket] * self.batch_sizes[bucket] * self.world_size)
        return self.sequences[bucket][served:]

    def batch(self, step: int, rank: int) -> np.ndarray:
        """The sample ids of `rank` at global `step`.

        Global batch 0 of a bucket is laid out batch-major (it holds the samples carried over from the last
        epoch); the others rank-major, so each rank reads a contiguous run of the bucket's order, unless
        the layout is "global" (every batch batch-major: the same global batches for any world size).
        """
        bucket, index = int(self.step_bucket[step]), int(self.step_batch[step])
        size, count = int(self.batch_sizes[bucket]), int(self.num_batches[bucket])
        sequence = self.sequences[bucket]
        if index == 0 or self.rank_layout == "global":
            start = (index * self.world_size + rank) * size
        else:
            start = size * self.world_size + rank * (count - 1) * size + (index - 1) * size
        return sequence[start : start + size]


@dataclass
class Schedule:
    buckets: list[BucketLayout]
    world_size: int
    seed: int
    shuffle_shards: int = 8
    remainder: str = "carry"  # or "drop"
    rank_layout: str = "runs"  # or "global"
    _carry: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if self.remainder not in ("carry", "drop"):
            raise ValueError(f"remainder must be 'carry' or 'drop', got {self.remainder!r}")

    def _bucket_order(self, bucket: int, epoch: int) -> np.ndarray:
        """Shuffled shards, then samples shuffled within groups of `shuffle_shards` consecutive shards."""
        layout = self.buckets[bucket]
        rng = np.random.default_rng([self.seed, epoch, bucket, 1])
        sizes = layout.shard_sizes.astype(np.int64)
        shard_starts = layout.first_id + np.concatenate([[0], np.cumsum(sizes)[:-1]])
        shard_order = rng.permutation(len(sizes))
        sizes, shard_starts = sizes[shard_order], shard_starts[shard_order]
        ends = np.cumsum(sizes)
        # Concatenated ids of the shards in their new order: start of each shard + position within it.
        ids = np.repeat(shard_starts - (ends - sizes), sizes) + np.arange(ends[-1] if len(ends) else 0)
        bounds = np.concatenate([[0], ends[self.shuffle_shards - 1 :: self.shuffle_shards], ends[-1:]])
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            rng.shuffle(ids[begin:end])  # in place on the view
        return ids

    def _carry_in(self, epoch: int) -> list[np.ndarray]:
        """Samples left over at the end of epoch-1 (served first in `epoch`); none for epoch 0 or "drop"."""
        empty = [np.zeros(0, np.int64) for _ in self.buckets]
        if epoch == 0 or self.remainder == "drop":
            return empty
        if epoch not in self._carry:
            # The carry chains through epochs; compute forward from the latest one known.
            known = max((e for e in self._carry if e < epoch), default=0)
            carry = self._carry.get(known, empty)
            for e in range(known, epoch):
                sequences = [self._sequence(b, e, carry[b]) for b in range(len(self.buckets))]
                carry = [seq[self._served(b, len(seq)) :] for b, seq in enumerate(sequences)]
                self._carry[e + 1] = carry
        return self._carry[epoch]

    def _served(self, bucket: int, available: int) -> int:
        per_step = self.buckets[bucket].batch_size * self.world_size
        return available // per_step * per_step

    def _sequence(self, bucket: int, epoch: int, carry: np.ndarray) -> np.ndarray:
        order = self._bucket_order(bucket, epoch)
        if not len(carry):
            return order
        layout = self.buckets[bucket]
        carried = np.zeros(layout.num_samples, bool)
        carried[carry - layout.first_id] = True
        return np.concatenate([carry, order[~carried[order - layout.first_id]]])

    def epoch(self, epoch: int) -> EpochPlan:
        carry = self._carry_in(epoch)
        sequences = [self._sequence(b, epoch, carry[b]) for b in range(len(self.buckets))]
        batch_sizes = np.array([layout.batch_size for layout in self.buckets], np.int64)
        num_batches = np.array([len(seq) // (size * self.world_size) for seq, size in zip(sequences, batch_sizes, strict=True)],
                               np.int64)
        # Buckets drawn in proportion to their number of global batches: a random order of the multiset.
        rng = np.random.default_rng([self.seed, epoch, 2**31 - 1])
        step_bucket = rng.permutation(np.repeat(np.arange(len(self.buckets)), num_batches))
        by_bucket = np.argsort(step_bucket, kind="stable")
        first_step = np.concatenate([[0], np.cumsum(num_batches)[:-1]])
        step_batch = np.empty(len(step_bucket), np.int64)
        step_batch[by_bucket] = np.arange(len(step_bucket)) - np.repeat(first_step, num_batches)
        return EpochPlan(epoch, self.world_size, batch_sizes, num_batches, sequences, step_bucket, step_batch,
                         self.rank_layout)


def latent_tokens(frames: int, height: int, width: int, vae_stride: tuple[int, int, int],
                  patch_size: tuple[int, int, int]) -> int:
    """Tokens the DiT sees for one sample: causal VAE keeps frame 0, (T-1)/4 + 1 (reference notes §1.5)."""
    latent_t = (frames - 1) // vae_stride[0] + 1
    latent_h, latent_w = height // vae_stride[1], width // vae_stride[2]
    return max(1, latent_t // patch_size[0]) * max(1, latent_h // patch_size[1]) * max(1, latent_w // patch_size[2])
