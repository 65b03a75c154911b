"""The stage's MLflow run for a trainer: opened by rank 0 only, continued (same id) after a resume.

Every rank gets a `RankRun`; on ranks other than 0 its methods do nothing, so training code logs
without asking which rank it is on (the values it logs are already averaged over the ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from components.core import tracking
from components.core.distributed import Context


class RankRun:
    def __init__(self, run: tracking.Run | None):
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run else None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run:
            self.run.log_metrics(metrics, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run:
            self.run.set_tags(tags)

    def log_artifact(self, local_path: Any, artifact_path: str | None = None) -> None:
        if self.run:
            self.run.log_artifact(local_path, artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.run:
            self.run.log_dict(obj, artifact_file)


@contextlib.contextmanager
def training_run(ctx: Context, name: str, resume_run_id: str | None, parent_run_id: str | None,
                 tags: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[RankRun]:
    """A new run (tags, params), or the interrupted one `resume_run_id` reopened; FAILED on an exception."""
    if not ctx.is_main:
        yield RankRun(None)
        return
    if resume_run_id is not None:
        run = tracking.Run(resume_run_id, tracking.get_run(resume_run_id)["experiment_id"])
        run.reopen()  # a pipeline rerun may have marked it KILLED meanwhile
        run.set_tags({"resumed": "true"})
    else:
        run = tracking.start_run(name, parent_run_id=parent_run_id, tags=dict(tags))
        run.log_params(params)
    try:
        yield RankRun(run)
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


def result(finished: Mapping[str, Any], skipped: bool) -> dict[str, Any]:
    """What a trainer returns: the main fields of its finished manifest, and whether this call only found it."""
    return {"out": finished["out"], "model": finished["model"], "stage": finished["stage"],
            "steps": finished["steps"], "mlflow_run_id": finished["mlflow_run_id"],
            "metrics": finished["metrics"], "skipped": skipped}
