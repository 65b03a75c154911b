"""Worker processes with a time limit per job: a worker stuck on one job is killed and replaced.

A decoder can hang inside C code (a stalled network mount, a named pipe, a pathological stream) where no
Python signal handler runs, so the limit is kept by the parent: it hands each worker one job at a time,
waits on all of them with a deadline, and kills a worker that passes it. A worker that dies (a decoder
crash) is replaced as well. Either way the parent knows which job it was on, so only that job fails and
the others go on; `concurrent.futures` pools can do neither (no per-job limit, and one dead worker breaks
the whole pool). Starting has a deadline too: a worker stuck in its imports or initializer (a model load
from a stalled mount) fails the run with a clear error instead of stalling it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

Job = tuple  # picklable, job[0] identifies it
START_TIMEOUT_S = 300.0  # default seconds for a worker to become ready (imports, initializer)


def _serve(conn: Connection, job_fn: Callable[[Job], Any], initializer: Callable[[], None] | None) -> None:
    """Worker process: announce readiness (after imports and `initializer`), then run jobs until None."""
    if initializer is not None:
        initializer()
    conn.send(None)
    while (job := conn.recv()) is not None:
        conn.send(job_fn(job))


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    job: Job | None = None
    deadline: float = float("inf")  # to become ready while not `ready`, then to finish `job`


@dataclass(frozen=True)
class Failure:
    """A job that produced no result: its worker passed the time limit and was killed (`timed_out`), or
    died by itself (`exit_code`)."""

    timed_out: bool
    exit_code: int | None = None


def _start(context, job_fn: Callable[[Job], Any], initializer: Callable[[], None] | None,
           start_timeout_s: float) -> _Worker:
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_serve, args=(child_end, job_fn, initializer), daemon=True)
    process.start()
    child_end.close()  # the parent keeps only its end: a dead worker then reads as EOF
    return _Worker(process, parent_end, deadline=time.monotonic() + start_timeout_s)


def _stop(worker: _Worker, kill: bool) -> None:
    if not kill and worker.process.is_alive():
        try:
            worker.conn.send(None)
            worker.process.join(timeout=5)
        except OSError:  # already gone
            pass
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join()
    worker.conn.close()


def _poll(worker: _Worker) -> tuple[str, Any]:
    """("message", what it sent), ("died", None), or ("busy", None)."""
    if worker.conn.poll():
        try:
            return "message", worker.conn.recv()
        except EOFError:
            return "died", None
    return ("busy", None) if worker.process.is_alive() else ("died", None)


def run_jobs(jobs: list[Job], workers: int, job_fn: Callable[[Job], Any], timeout_s: float,
             initializer: Callable[[], None] | None = None,
             start_timeout_s: float = START_TIMEOUT_S) -> Iterator[tuple[Job, Any]]:
    """Yield `(job, result)` for every job, in completion order; `result` is a `Failure` for a job whose
    worker passed `timeout_s` on it or died; a worker not ready within `start_timeout_s` raises. `job_fn`
    and `initializer` must be picklable (module level): workers are spawned, not forked (a forked copy of
    a process holding torch or threads is unsafe)."""
    if not jobs:
        return
    context = get_context("spawn")
    pending = deque(jobs)
    pool = [_start(context, job_fn, initializer, start_timeout_s) for _ in range(max(1, min(workers, len(jobs))))]

    def hand_out(worker: _Worker) -> None:
        worker.job = pending.popleft() if pending else None
        worker.deadline = float("inf") if worker.job is None else time.monotonic() + timeout_s
        if worker.job is not None:
            worker.conn.send(worker.job)

    def replace(worker: _Worker) -> None:
        _stop(worker, kill=True)
        pool.remove(worker)
        if pending:
            pool.append(_start(context, job_fn, initializer, start_timeout_s))

    try:
        while pending or any(w.job is not None for w in pool):
            nearest = min(w.deadline for w in pool)
            timeout = None if nearest == float("inf") else max(0.0, nearest - time.monotonic())
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool], timeout=timeout))
            for worker in list(pool):
                if worker.conn in ready or worker.process.sentinel in ready:
                    state, message = _poll(worker)
                    if state == "message":
                        if worker.ready:
                            yield worker.job, message
                        worker.ready = True
                        hand_out(worker)
                    elif state == "died":
                        if not worker.ready:
                            raise RuntimeError("a filter worker process failed to start "
                                               f"(exit code {worker.process.exitcode})")
                        job = worker.job
                        replace(worker)
                        if job is not None:
                            yield job, Failure(timed_out=False, exit_code=worker.process.exitcode)
                        continue
                if time.monotonic() < worker.deadline:
                    continue
                if not worker.ready:
                    raise RuntimeError(f"a filter worker process did not start within {start_timeout_s:g} s "
                                       "(imports and model loading; filter.worker_start_timeout_s)")
                if worker.job is not None:
                    job = worker.job
                    replace(worker)
                    yield job, Failure(timed_out=True)
    finally:
        for worker in pool:
            _stop(worker, kill=worker.job is not None or not worker.ready)
