"""Bucket schedule speed and quality, ours against Open-Sora Plan v1.2's LengthGroupedSampler.

    python bench/sampler_speed.py [--samples 10000000] [--compare-samples 1000000]

(1) Our schedule for a 10-million-sample manifest (synthetic, in memory: 30% images, videos of 29-93
frames, five resolutions) must build in under 10 s. (2) On 1M samples, world size 8, batch 4, both
samplers are timed and checked for: steps whose ranks get different shapes, duplicated samples, and
whether epoch 1 repeats epoch 0. The reference algorithm is re-implemented from its description in the
reference notes §5.5 (our own code): randperm(seed 42) -> stable sort by frame count -> megabatches of
world*batch -> split_to_even_chunks (greedy by length, padding with duplicates) -> shuffled megabatches
-> per-batch majority replacement. It groups by frame count only (§9.21), so its shape is the frame count;
ours is (frames, height, width).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.sampler import BucketLayout, Schedule  # noqa: E402

FRAMES = [29, 45, 61, 77, 93]  # reference notes §5.2: find_closest_y lengths
RESOLUTIONS = [(480, 640), (480, 848), (720, 1280), (512, 512), (640, 480)]


def synthetic_shapes(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames, resolution index) per sample: 30% images, the rest 29-93 frames."""
    rng = np.random.default_rng(seed)
    frames = np.where(rng.random(count) < 0.3, 1, rng.choice(FRAMES, count))
    resolution = rng.choice(len(RESOLUTIONS), count, p=[0.35, 0.25, 0.2, 0.1, 0.1])
    return frames, resolution


def layouts_from(frames: np.ndarray, resolution: np.ndarray, batch_size: int, shard_size: int = 1000):
    """Bucket layouts as the shard stage would write them: one bucket per (frames, resolution)."""
    bucket_id = frames.astype(np.int64) * 16 + resolution
    names, counts = np.unique(bucket_id, return_counts=True)
    layouts, first = [], 0
    for name, count in zip(names, counts, strict=True):
        sizes = np.full(count // shard_size, shard_size, np.int64)
        if count % shard_size:
            sizes = np.append(sizes, count % shard_size)
        h, w = RESOLUTIONS[name % 16]
        layouts.append(BucketLayout(f"{name // 16}x{h}x{w}", sizes, first, batch_size))
        first += int(count)
    return layouts


def ours(layouts, world_size: int, epoch: int, seed: int = 0):
    schedule = Schedule(layouts, world_size, seed)
    started = time.perf_counter()
    plan = schedule.epoch(epoch)
    return plan, time.perf_counter() - started


def check_ours(plan, layouts, world_size: int) -> dict[str, float]:
    """Vectorised over all steps: every rank's samples' bucket, and duplicates."""
    bucket_of = np.repeat(np.arange(len(layouts)), [layout.num_samples for layout in layouts])
    step_ids = np.stack([np.concatenate([plan.batch(step, rank) for rank in range(world_size)])
                         for step in range(len(plan))])  # (S, world * batch)
    mixed = np.any(bucket_of[step_ids] != bucket_of[step_ids[:, :1]], axis=1)
    served = step_ids.ravel()
    return {"steps": len(plan), "mixed_shape_steps_pct": 100 * float(mixed.mean()),
            "duplicated_samples_pct": 100 * (1 - len(np.unique(served)) / len(served))}


# --------------------------------------------------------------------------- reference re-implementation


def _split_to_even_chunks(indices: list[int], lengths, world_size: int, batch_size: int, rng: random.Random):
    if len(indices) % world_size:
        chunks = [indices[rank::world_size] for rank in range(world_size)]
    else:
        per_chunk = len(indices) // world_size
        chunks, sums = [[] for _ in range(world_size)], [0] * world_size
        for index in indices:
            open_chunks = [c for c in range(world_size) if len(chunks[c]) < per_chunk]
            target = min(open_chunks, key=lambda c: sums[c])
            chunks[target].append(index)
            sums[target] += lengths[index]
    for rank, chunk in enumerate(chunks):
        if not chunk:  # an empty chunk copies a random earlier one
            chunks[rank] = list(chunks[rng.randrange(rank)]) if rank else []
        while 0 < len(chunks[rank]) < batch_size:  # short chunks padded with duplicates
            chunks[rank].append(rng.choice(chunks[rank]))
    return chunks


def _majority_fill(batch: list[int], lengths, rng: random.Random) -> list[int]:
    values = [lengths[i] for i in batch]
    majority = max(set(values), key=values.count)
    if len(set(values)) == 1:
        return batch
    keep = [i for i in batch if lengths[i] == majority]
    return [i if lengths[i] == majority else rng.choice(keep) for i in batch]


def reference_sampler(lengths: list[int], world_size: int, batch_size: int, seed: int = 42) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed)  # the same every epoch: there is no set_epoch (§9.20)
    rng = random.Random(seed)
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    indices.sort(key=lambda i: -lengths[i])  # stable: group_frame
    size = world_size * batch_size
    megabatches = [sorted(indices[i : i + size], key=lambda i: -lengths[i]) for i in range(0, len(indices), size)]
    megabatches = [_split_to_even_chunks(mb, lengths, world_size, batch_size, rng) for mb in megabatches]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    flat = []
    for m in order:
        for chunk in megabatches[m]:
            flat += _majority_fill(chunk, lengths, rng)
    return flat


def check_reference(stream: list[int], lengths: list[int], world_size: int, batch_size: int) -> dict[str, float]:
    per_step = world_size * batch_size  # accelerate deals batch k of each group of world_size to rank k
    steps = len(stream) // per_step
    shape = np.asarray(lengths)[np.asarray(stream[: steps * per_step])].reshape(steps, per_step)
    mixed = np.any(shape != shape[:, :1], axis=1)
    return {"steps": steps, "mixed_shape_steps_pct": 100 * float(mixed.mean()),
            "duplicated_samples_pct": 100 * (1 - len(set(stream)) / len(stream))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--compare-samples", type=int, default=1_000_000)
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, dict] = {}

    frames, resolution = synthetic_shapes(args.samples)
    layouts = layouts_from(frames, resolution, args.batch_size)
    _, seconds = ours(layouts, args.world_size, epoch=0)
    _, seconds_epoch3 = ours(layouts, args.world_size, epoch=3)  # carries chain through epochs 0-2
    results["ours_10M"] = {"samples": args.samples, "buckets": len(layouts), "epoch0_seconds": round(seconds, 2),
                           "epoch3_fresh_seconds": round(seconds_epoch3, 2)}

    frames, resolution = synthetic_shapes(args.compare_samples, seed=1)
    layouts = layouts_from(frames, resolution, args.batch_size)
    plan0, seconds = ours(layouts, args.world_size, epoch=0)
    plan1, _ = ours(layouts, args.world_size, epoch=1)
    results["ours_1M"] = {"seconds": round(seconds, 2), "buckets": len(layouts), "grouping": "frames x height x width",
                          **check_ours(plan0, layouts, args.world_size),
                          "epoch1_repeats_epoch0": bool(np.array_equal(plan0.step_bucket, plan1.step_bucket)
                                                        and all(np.array_equal(a, b) for a, b in zip(plan0.sequences, plan1.sequences, strict=True)))}

    lengths = frames.tolist()
    started = time.perf_counter()
    stream0 = reference_sampler(lengths, args.world_size, args.batch_size)
    seconds = time.perf_counter() - started
    stream1 = reference_sampler(lengths, args.world_size, args.batch_size)
    results["open_sora_plan_1M"] = {"seconds": round(seconds, 2), "grouping": "frames only",
                                    **check_reference(stream0, lengths, args.world_size, args.batch_size),
                                    "epoch1_repeats_epoch0": stream0 == stream1}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
