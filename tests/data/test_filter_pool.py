"""A worker process that dies (a decoder crash) costs only the video it was measuring."""

from __future__ import annotations

import os

from components.data.filter.stage import measure_all


def crash_on_index_2(job: tuple) -> tuple[int, dict]:
    """Pool job: dies hard on one video, as a segfaulting decoder would (module level: spawn pickles it)."""
    index = job[0]
    if index == 2:
        os._exit(1)
    return index, {"sha256": f"sha{index}", "measured": {"index": index}, "cached": False}


def test_a_dead_worker_rejects_only_its_video() -> None:
    jobs = [(index, f"/videos/{index}.mp4", {}, "/cache") for index in range(5)]
    results = measure_all(jobs, workers=2, job_fn=crash_on_index_2)
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert results[2]["reason"] == "error" and "/videos/2.mp4" in results[2]["message"]
    assert all(results[i]["measured"] == {"index": i} for i in (0, 1, 3, 4))
