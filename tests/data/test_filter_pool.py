"""The filter's worker pool: a worker that dies (a decoder crash) or stalls (a read that never returns)
costs only the video it was measuring; the parent stops and replaces it and the others go on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from components.data.filter.pool import Failure, run_jobs
from components.data.filter.stage import measure_all


def crash_or_stall(job: tuple) -> tuple[int, dict]:
    """Pool job (module level: spawn pickles it): index 2 dies hard, as a segfaulting decoder would;
    index 4 opens a named pipe nobody writes to, which blocks inside the open() system call for ever."""
    index = job[0]
    if index == 2:
        os._exit(3)
    if index == 4:
        open(job[1], "rb").close()  # noqa: SIM115
    return index, {"sha256": f"sha{index}", "measured": {"index": index}, "cached": False}


def stall_forever() -> None:
    """Pool initializer (module level: spawn pickles it) that never returns, as a model load from a
    stalled mount would."""
    time.sleep(3600)


def test_dead_and_stalled_workers_cost_only_their_video(tmp_path: Path) -> None:
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    jobs = [(index, str(fifo) if index == 4 else f"/videos/{index}.mp4", {}, "/cache") for index in range(7)]
    started = time.monotonic()
    results = measure_all(jobs, workers=2, timeout_s=1.0, job_fn=crash_or_stall)
    assert time.monotonic() - started < 30
    assert sorted(results) == list(range(7))
    assert results[2]["reason"] == "error" and "/videos/2.mp4" in results[2]["message"] and "exit code 3" in results[2]["message"]
    assert results[4]["reason"] == "timeout" and str(fifo) in results[4]["message"]
    assert "filter.video_timeout_s = 1 s" in results[4]["message"]
    assert all(results[i]["measured"] == {"index": i} for i in (0, 1, 3, 5, 6))


def test_one_worker_goes_on_after_a_stall(tmp_path: Path) -> None:
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    jobs = [(3, "/videos/a.mp4"), (4, str(fifo)), (5, "/videos/b.mp4")]
    outcomes = dict((job[0], result) for job, result in run_jobs(jobs, workers=1, job_fn=crash_or_stall, timeout_s=1.0))
    assert outcomes[4] == Failure(timed_out=True)
    assert outcomes[3][1]["measured"] == {"index": 3} and outcomes[5][1]["measured"] == {"index": 5}


def test_a_worker_that_never_starts_fails_the_run_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not start within 3 s .*filter.worker_start_timeout_s"):
        list(run_jobs([(0, "/videos/a.mp4")], workers=1, job_fn=crash_or_stall, timeout_s=1.0,
                      initializer=stall_forever, start_timeout_s=3.0))
    assert time.monotonic() - started < 20  # the stuck worker is killed, not waited for
