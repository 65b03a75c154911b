"""The global bucket schedule: same bucket per step, disjoint cover, per-epoch order, carried remainders."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.buckets import Bucket
from components.data.config import LoaderConfig
from components.data.loader import batch_size_for
from components.data.sampler import BucketLayout, Schedule, latent_tokens


def _layouts(spec: list[tuple[int, int, int]]) -> list[BucketLayout]:
    """(samples, shard size, batch size) per bucket -> layouts with consecutive global ids."""
    layouts, first = [], 0
    for number, (samples, shard_size, batch) in enumerate(spec):
        sizes = [shard_size] * (samples // shard_size) + ([samples % shard_size] if samples % shard_size else [])
        layouts.append(BucketLayout(f"b{number}", np.array(sizes, np.int64), first, batch))
        first += samples
    return layouts


SPEC = [(103, 10, 3), (50, 7, 2), (9, 4, 4), (400, 25, 1)]  # bucket 2 never fills a global batch of 2 ranks x 4


def _bucket_of(layouts, sample_id):
    return next(b for b, layout in enumerate(layouts) if layout.first_id <= sample_id < layout.first_id + layout.num_samples)


@pytest.mark.parametrize("remainder", ["carry", "drop"])
def test_steps_share_a_bucket_and_cover_each_sample_once(remainder):
    layouts = _layouts(SPEC)
    schedule = Schedule(layouts, world_size=2, seed=3, shuffle_shards=2, remainder=remainder)
    for epoch in range(3):
        plan = schedule.epoch(epoch)
        served = []
        for step in range(len(plan)):
            per_rank = [plan.batch(step, rank) for rank in range(2)]
            bucket = int(plan.step_bucket[step])
            assert all(len(ids) == layouts[bucket].batch_size for ids in per_rank)
            assert {_bucket_of(layouts, int(i)) for ids in per_rank for i in ids} == {bucket}
            served += [int(i) for ids in per_rank for i in ids]
        assert len(served) == len(set(served))  # no sample twice in an epoch, none duplicated in a batch
        leftovers = [plan.leftover(b) for b in range(len(layouts))]
        for b, layout in enumerate(layouts):
            assert len(leftovers[b]) < layout.batch_size * 2  # at most one global batch's remainder
        assert sorted(served + [int(i) for left in leftovers for i in left]) == list(range(sum(s for s, _, _ in SPEC)))


def test_carried_remainder_is_served_first_next_epoch():
    layouts = _layouts(SPEC)
    schedule = Schedule(layouts, world_size=2, seed=3, shuffle_shards=2)
    previous = schedule.epoch(0)
    current = schedule.epoch(1)
    for b in (0, 1):
        carried = set(previous.leftover(b).tolist())
        assert carried
        first_step = int(np.flatnonzero(current.step_bucket == b)[0])
        first_batch = {int(i) for rank in range(2) for i in current.batch(first_step, rank)}
        assert carried <= first_batch
    # A fresh schedule (e.g. after a restart at epoch 5) computes the same plan as one that walked there.
    walked = [schedule.epoch(e) for e in range(6)][-1]
    fresh = Schedule(layouts, world_size=2, seed=3, shuffle_shards=2).epoch(5)
    assert all(np.array_equal(a, b) for a, b in zip(walked.sequences, fresh.sequences, strict=True))
    assert np.array_equal(walked.step_bucket, fresh.step_bucket)


def test_order_changes_every_epoch_and_is_deterministic():
    layouts = _layouts(SPEC)
    plans = [Schedule(layouts, 2, seed=0).epoch(e) for e in range(3)]
    assert not np.array_equal(plans[0].step_bucket, plans[1].step_bucket)
    assert not np.array_equal(plans[0].sequences[3], plans[1].sequences[3])
    again = Schedule(layouts, 2, seed=0).epoch(1)
    assert np.array_equal(again.step_bucket, plans[1].step_bucket)
    assert not np.array_equal(Schedule(layouts, 2, seed=1).epoch(1).step_bucket, plans[1].step_bucket)


def test_buckets_drawn_in_proportion_across_the_epoch():
    layouts = _layouts([(4000, 100, 1), (1000, 100, 1)])
    plan = Schedule(layouts, world_size=1, seed=0).epoch(0)
    first_half = plan.step_bucket[: len(plan) // 2]
    assert abs(np.mean(first_half == 0) - 0.8) < 0.03  # not all of bucket 0 first, as a sort would do


def test_rank_reads_a_contiguous_run_of_shards():
    layouts = _layouts([(800, 50, 4)])  # 16 shards, 2 ranks
    plan = Schedule(layouts, world_size=2, seed=0, shuffle_shards=2).epoch(0)
    shards_of = [set() for _ in range(2)]
    for step in range(1, len(plan)):  # step batches after the first are rank-major
        for rank in range(2):
            shards_of[rank] |= {int(i) // 50 for i in plan.batch(step, rank)}
    assert len(shards_of[0] & shards_of[1]) <= 2 and len(shards_of[0]) <= 10


def test_batch_size_from_token_budget():
    config = LoaderConfig(batch_tokens=512, max_batch_size=16, batch_size_overrides={"17x64x64": 3})
    assert latent_tokens(17, 64, 64, (4, 8, 8), (1, 2, 2)) == 5 * 4 * 4
    assert latent_tokens(93, 720, 1280, (4, 8, 8), (1, 2, 2)) == 24 * 45 * 80  # reference notes §1.5, §2.2
    assert batch_size_for(Bucket(9, 64, 64), config) == 512 // (3 * 16)
    assert batch_size_for(Bucket(1, 64, 64), config) == 16  # capped
    assert batch_size_for(Bucket(17, 64, 64), config) == 3  # override


def test_global_layout_serves_the_same_global_batches_for_any_world_size():
    """rank_layout "global": step s of 2 ranks × batch 2 is step s of 1 rank × batch 4, split in rank order."""
    shards = np.array([5, 7, 4, 6], np.int64)

    def plan(world_size: int, batch_size: int):
        return Schedule([BucketLayout("b", shards, 0, batch_size)], world_size, seed=3, shuffle_shards=2,
                        rank_layout="global").epoch(1)

    one, two = plan(1, 4), plan(2, 2)
    assert len(one) == len(two) == 5
    for step in range(len(one)):
        assert np.array_equal(one.batch(step, 0), np.concatenate([two.batch(step, 0), two.batch(step, 1)]))
    runs = Schedule([BucketLayout("b", shards, 0, 2)], 2, seed=3, shuffle_shards=2).epoch(1)
    assert not np.array_equal(runs.batch(1, 1), two.batch(1, 1))  # the default keeps per-rank runs
