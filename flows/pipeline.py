"""`t2v-full`: the whole pipeline, stage after stage, as one MLflow tree and one Prefect report.

Each stage runs in this process as a subflow, or, with `stage_deployment` set (e.g. `local`, `docker`),
as its own flow run of deployment `t2v-<stage>/<stage_deployment>` on that deployment's work pool.
Either way the stages meet only in the artifact store under the run root, and every stage's MLflow run
is nested under this pipeline run's parent run (its id is passed along).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as current_flow_run
from prefect.tasks import exponential_backoff

from components.core import liveness, storage, tracking
from flows import preflight, report, runner
from flows.logs import forward_component_logs
from flows.stage_flows import STAGE_FLOWS
from flows.stages import Stage, absolute_root, chain, default_run_root, stage_dir

REPORT_KEY = "t2v-full-report"
RUN_ROOT_TAG = "t2v.run_root"
# The parent run's heartbeat; an earlier pipeline run on the same run root whose heartbeat is older than
# STALE_AFTER_S (or whose process on this host is gone) died without ending its MLflow runs. The same
# bounds and liveness rule as a stage's lease on its output folder (components.core.liveness).
HEARTBEAT_S = liveness.HEARTBEAT_S
STALE_AFTER_S = liveness.STALE_AFTER_S


class StageFailed(RuntimeError):
    """A stage failed; the message names the stage and carries the stage's own message."""


class RunRootInUse(RuntimeError):
    """Another pipeline run is alive on the same run root; two would overwrite each other's stages."""


def claim_run_root(run_root: str) -> list[str]:
    """The ids of earlier pipeline runs on `run_root` left RUNNING by a dead process (to be superseded);
    raises RunRootInUse when one is still alive."""
    earlier = tracking.running_runs(RUN_ROOT_TAG, run_root)
    for run in earlier:
        if tracking.owner_is_alive(run, STALE_AFTER_S):
            age = tracking.seconds_since_heartbeat(run)
            raise RunRootInUse(
                f"run root {run_root} is in use by pipeline run {run['run_id']} (process "
                f"{run['tags'].get(tracking.PID_TAG)} on {run['tags'].get(tracking.HOST_TAG)}, heartbeat {age:.0f} s "
                f"ago): wait for it or stop it. If its process is gone, this run root frees up "
                f"{STALE_AFTER_S:.0f} s after its last heartbeat.")
    return [run["run_id"] for run in earlier]


_io = task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), cache_policy=NO_CACHE)


@_io
def read_manifest(out: str) -> dict[str, Any] | None:
    return runner.read_manifest(out)


@_io
def describe(stage: Stage, run_root: str, before: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    return runner.describe(stage, run_root, before, seconds)


@_io
def publish_report(run_root: str, markdown: str) -> None:
    storage.write_text(storage.join(run_root, "report.md"), markdown)
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY, description="t2v-full stage table")


@_io
def tag_model_lineage(result: dict[str, Any], earlier: list[dict[str, Any]], parent_run_id: str) -> None:
    """Complete the lineage of a model a stage registered (the stage tags what it knows itself)."""
    registered = result["registered_model"]
    tags = {"lineage.pipeline_run_id": parent_run_id, f"lineage.{result['stage']}_run_id": result["mlflow_run_id"],
            **{f"lineage.{stage['stage']}_manifest_sha256": stage["manifest_sha256"] for stage in earlier},
            **{f"lineage.{stage['stage']}_run_id": stage["mlflow_run_id"] for stage in earlier}}
    tracking.set_model_version_tags(registered["name"], registered["version"], tags)


@task(cache_policy=NO_CACHE, task_run_name="{stage.name}-finished?")
def finished_result(stage: Stage, parameters: dict[str, Any]) -> dict[str, Any] | None:
    return runner.finished_result(stage, **parameters)


def call_stage(stage: Stage, parameters: dict[str, Any], stage_deployment: str | None) -> dict[str, Any]:
    """Run one stage in-process (subflow) or as a flow run of its deployment; return its description.

    A stage already finished is not handed to a worker: its own skip check runs here first."""
    if not stage_deployment:
        return STAGE_FLOWS[stage.name](**parameters)
    done = finished_result(stage, parameters)
    if done:
        return done
    run_root = parameters["run_root"]
    before = read_manifest(stage_dir(run_root, stage.name))
    started = time.monotonic()
    deployment = f"t2v-{stage.name}/{stage_deployment}"
    try:
        child = run_deployment(deployment, parameters=parameters, as_subflow=True, poll_interval=2)
    except ObjectNotFound:
        raise LookupError(f"no deployment {deployment} on this Prefect server: deploy it "
                          "(`prefect --no-prompt deploy --all` from the repository root) or pick another "
                          "stage_deployment") from None
    if not child.state or not child.state.is_completed():
        state = child.state.name if child.state else "no state"
        raise RuntimeError(f"flow run {child.name} ended {state}: {child.state.message if child.state else ''}")
    return describe(stage, run_root, before, time.monotonic() - started)


@flow(name="t2v-full")
def pipeline(
    run_root: str | None = None,
    preset: str = "tiny",
    overrides: list[str] | None = None,
    num: int = 24,
    seed: int = 0,
    kind: str = "shapes",
    annotations: str | None = None,
    stage_deployment: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Synthesize (or ingest `annotations`) → filter → shard → VAE phases 1, 2 and eval → latents → DiT
    stages 1-5 (each from the one before) → DiT eval.

    `overrides` are `<component>.<key>=<value>` (`data.synth.bad_fraction=0.1`); `until` stops after
    that stage. Defaults need no parameters: tiny preset, synthetic data, `$T2V_HOME/runs/<preset>`.
    """
    logger = get_run_logger()
    forward_component_logs()
    overrides = list(overrides or [])
    stages = chain(annotations, until)
    preflight.check(stages, preset, overrides, annotations)  # user errors fail here, before any stage starts
    run_root = absolute_root(run_root or default_run_root(preset))
    options = {"num": num, "seed": seed, "kind": kind, "annotations": annotations}

    interrupted = claim_run_root(run_root)
    tags = {RUN_ROOT_TAG: run_root, "prefect.flow_run_id": str(current_flow_run.id), **tracking.owner_tags()}
    if interrupted:
        tags["t2v.resumes"] = ",".join(interrupted)
    parent = tracking.start_run("t2v-full", tags=tags)
    for run_id in interrupted:
        logger.warning("pipeline run %s on this run root died without ending: marked KILLED", run_id)
        tracking.mark_killed(run_id, {"t2v.superseded_by": parent.run_id})
    parent.log_params({"preset": preset, "overrides": overrides, "run_root": run_root,
                       "stages": [stage.name for stage in stages], "stage_deployment": stage_deployment,
                       **options})
    parent_info = {"run_id": parent.run_id, "url": tracking.run_url(parent)}
    logger.info("pipeline run root %s, MLflow parent run %s", run_root, parent.run_id)
    with tracking.heartbeat(parent, HEARTBEAT_S):
        return _run_stages(stages, run_root, preset, overrides, options, stage_deployment, parent, parent_info)


def _run_stages(stages: list[Stage], run_root: str, preset: str, overrides: list[str], options: dict[str, Any],
                stage_deployment: str | None, parent: tracking.Run, parent_info: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    results: list[dict[str, Any]] = []
    for stage in stages:
        parameters = {"run_root": run_root, "preset": preset, "overrides": overrides,
                      "parent_run_id": parent.run_id, **{name: options[name] for name in stage.options}}
        started = time.monotonic()
        try:
            result = call_stage(stage, parameters, stage_deployment)
        except Exception as exc:
            message = f"stage '{stage.name}' failed: {type(exc).__name__}: {exc}"
            results.append({"stage": stage.name, "status": "failed", "seconds": time.monotonic() - started})
            parent.set_tags({f"stage.{stage.name}.status": "failed"})
            parent.finish("FAILED")
            publish_report(run_root, report.markdown(run_root, results, parent_info, error=message))
            raise StageFailed(message) from exc
        if result.get("registered_model") and result["status"] == "ran":
            tag_model_lineage(result, results, parent.run_id)
        results.append(result)
        parent.set_tags({f"stage.{stage.name}.status": result["status"],
                         f"manifest.{stage.name}.sha256": result["manifest_sha256"]})
        logger.info("stage %s: %s (%.1fs)", stage.name, result["status"], result["seconds"])

    parent.finish("FINISHED")
    publish_report(run_root, report.markdown(run_root, results, parent_info))
    return {"run_root": run_root, "mlflow_run_id": parent.run_id, "mlflow_url": parent_info["url"],
            "stages": results}
