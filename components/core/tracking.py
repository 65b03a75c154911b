"""Experiment tracking: the only module that calls mlflow.

One parent run per pipeline run, one nested run per stage. A stage may run in another process or
container: it receives the parent's run id (argument or `T2V_PARENT_RUN_ID`) and opens its own run with
the `mlflow.parentRunId` tag, so the MLflow UI shows the pipeline as one tree.

The tracking URI is `MLFLOW_TRACKING_URI` when set (a server), else a sqlite file under the working
folder (`$T2V_HOME/mlflow.db`, default `./.t2v`), which needs no set-up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core import liveness

PARENT_RUN_ENV = "T2V_PARENT_RUN_ID"
EXPERIMENT_ENV = "T2V_EXPERIMENT"
DEFAULT_EXPERIMENT = "t2v-pipeline"
_MAX_PARAM_LENGTH = 6000

# Which process owns a run, and when it last said it was alive: MLflow leaves the run of a process that
# was killed RUNNING for ever, so a later run on the same work tells dead from live by these tags.
HOST_TAG, PID_TAG, HEARTBEAT_TAG = "t2v.host", "t2v.pid", "t2v.heartbeat"

log = logging.getLogger(__name__)


def t2v_home() -> Path:
    """The working folder for local state (sqlite tracking DB, local artifacts)."""
    return Path(os.environ.get("T2V_HOME", ".t2v")).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = t2v_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


@functools.cache
def _client_for(uri: str):
    # Quiet mlflow's own telemetry before its first import.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _client():
    return _client_for(tracking_uri())


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # Local default: keep artifacts beside the sqlite file, not in ./mlruns.
        artifact_location = (t2v_home() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another stage process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            flat[name] = text[:_MAX_PARAM_LENGTH]
    return flat


@dataclass
class Run:
    """A handle on one MLflow run; every method logs to that run explicitly (no global active run)."""

    run_id: str
    experiment_id: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = list(flat.items())
        for start in range(0, len(items), 100):
            _client().log_batch(self.run_id, params=[Param(k, v) for k, v in items[start : start + 100]])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step or 0) for k, v in metrics.items()]
        _client().log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        _client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under `artifact_path` of this run."""
        local_path = Path(local_path)
        if local_path.is_dir():
            _client().log_artifacts(self.run_id, str(local_path), artifact_path)
        else:
            _client().log_artifact(self.run_id, str(local_path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True))
            parent = str(Path(artifact_file).parent)
            self.log_artifact(path, None if parent == "." else parent)

    def artifact_uri(self, artifact_path: str = "") -> str:
        return f"runs:/{self.run_id}/{artifact_path}".rstrip("/")

    def finish(self, status: str = "FINISHED") -> None:
        _client().set_terminated(self.run_id, status=status)

    def reopen(self) -> None:
        """RUNNING again: a resumed stage continues its interrupted (KILLED or still RUNNING) run."""
        _client().update_run(self.run_id, status="RUNNING")


def start_run(
    name: str,
    *,
    parent_run_id: str | None = None,
    experiment: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Run:
    """Open a run (nested under `parent_run_id` when given, else under `T2V_PARENT_RUN_ID` if set)."""
    client = _client()
    parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = _experiment_id(client, experiment or os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, tags=all_tags, run_name=name)
    return Run(run.info.run_id, experiment_id)


@contextlib.contextmanager
def stage_run(
    name: str,
    *,
    parent_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Run]:
    """A run for one stage: FINISHED when the block completes, FAILED (and re-raised) when it raises."""
    run = start_run(name, parent_run_id=parent_run_id, tags=tags)
    if params:
        run.log_params(params)
    try:
        yield run
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the run's owner, with a first heartbeat (see `heartbeat`)."""
    owner = liveness.this_owner()
    return {HOST_TAG: owner["host"], PID_TAG: owner["pid"], HEARTBEAT_TAG: owner["heartbeat"]}


def heartbeat(run: Run, every_s: float) -> contextlib.AbstractContextManager[None]:
    """Tag `run` with the time every `every_s` seconds while the block runs (a daemon thread)."""
    return liveness.beating(lambda: run.set_tags({HEARTBEAT_TAG: f"{time.time():.0f}"}), every_s, f"run {run.run_id}")


def seconds_since_heartbeat(run: Mapping[str, Any]) -> float:
    """Age of the run's last heartbeat (infinite without one)."""
    return liveness.seconds_since(run["tags"].get(HEARTBEAT_TAG))


def owner_is_alive(run: Mapping[str, Any], stale_after_s: float) -> bool:
    """Whether the process that owns `run` may still be working on it (`liveness.is_alive`: the same rule
    as an output folder's lease)."""
    tags = run["tags"]
    return liveness.is_alive(tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(HEARTBEAT_TAG), stale_after_s)


def running_runs(tag: str, value: str) -> list[dict[str, Any]]:
    """RUNNING runs of the experiment (as `start_run` picks it) whose tag `tag` is `value`, oldest first."""
    client = _client()
    experiment_id = _experiment_id(client, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    # Few runs are RUNNING: filter the tag here rather than quote an arbitrary value into a filter string.
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                              order_by=["start_time ASC"])
    runs = [run for run in runs if run.data.tags.get(tag) == value]
    return [get_run(run.info.run_id) for run in runs]


def mark_killed(run_id: str, tags: Mapping[str, Any]) -> None:
    """End a run whose process died (and its children still RUNNING) as KILLED, with `tags` saying why."""
    for child in child_runs(run_id):
        if child["status"] == "RUNNING":
            mark_killed(child["run_id"], tags)
    run = Run(run_id, _client().get_run(run_id).info.experiment_id)
    run.set_tags(tags)
    run.finish("KILLED")


def get_run(run_id: str) -> dict[str, Any]:
    """Plain-data view of a run (for reports and tests): name, status, params, metrics, tags."""
    run = _client().get_run(run_id)
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def find_run(run_id: str) -> dict[str, Any] | None:
    """`get_run`, or None when this tracking store has no such run (an artifact folder made under another
    store, or copied here)."""
    from mlflow.exceptions import MlflowException

    try:
        return get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def child_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """Runs whose `mlflow.parentRunId` is `parent_run_id`, oldest first."""
    client = _client()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", order_by=["start_time ASC"]
    )
    return [get_run(run.info.run_id) for run in runs]


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    return [item.path for item in _client().list_artifacts(run_id, path)]


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _client().get_metric_history(run_id, key)]


def register_model(name: str, run: Run, artifact_path: str, tags: Mapping[str, Any] | None = None) -> str:
    """Register `runs:/<run>/<artifact_path>` as a new version of model `name`; returns the version."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered
    version = client.create_model_version(
        name, source=run.artifact_uri(artifact_path), run_id=run.run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
    )
    return str(version.version)


def set_model_version_tags(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Add tags (e.g. lineage known only to the pipeline) to an existing version of model `name`."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def model_version(name: str, version: str) -> dict[str, Any]:
    """Plain-data view of a registered model version: source, run id, tags."""
    found = _client().get_model_version(name, str(version))
    return {"name": found.name, "version": str(found.version), "source": found.source, "run_id": found.run_id,
            "tags": dict(found.tags)}


def set_model_alias(name: str, alias: str, version: str) -> None:
    """Point alias `alias` of model `name` (e.g. `stage5`) at `version`, moving it from any older version."""
    _client().set_registered_model_alias(name, alias, str(version))


_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))")


def registered_version(uri: str) -> dict[str, Any]:
    """`model_version` of `models:/<name>@<alias>` or `models:/<name>/<version>`; a ValueError names a URI
    that is malformed or points at nothing."""
    from mlflow.exceptions import MlflowException

    match = _MODELS_URI.fullmatch(uri)
    if not match:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    try:
        version = match["version"] or _client().get_model_version_by_alias(match["name"], match["alias"]).version
        return model_version(match["name"], str(version))
    except MlflowException as exc:
        raise ValueError(f"{uri}: no such registered model version ({exc.message})") from None


def download_artifacts(artifact_uri: str, destination: str | Path, missing_ok: bool = False) -> Path | None:
    """Copy the artifacts at `artifact_uri` (`runs:/<run>/<path>`, `models:/…` or a store URI) into
    `destination`; returns the local path of what was downloaded (None when absent and `missing_ok`)."""
    from mlflow.artifacts import download_artifacts as mlflow_download
    from mlflow.exceptions import MlflowException

    Path(destination).mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow_download(artifact_uri=artifact_uri, dst_path=str(destination), tracking_uri=tracking_uri()))
    except (MlflowException, OSError):
        if missing_ok:
            return None
        raise


def run_url(run: Run) -> str | None:
    """Link to the run in the MLflow UI when tracking goes to a server."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("http"):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
