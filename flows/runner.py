"""Run one stage and describe what it left in the artifact store (no prefect here).

A stage is skipped when its output folder already holds a manifest for the same inputs and
configuration: the component checks that itself and returns without touching the folder. We tell
"skipped" from "ran" by comparing the manifest before and after the call, which works the same whether
the stage ran in this process or on a worker elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from components.core import manifest, storage, tracking
from flows import launch
from flows.stages import Stage, split_overrides, stage_dir

log = logging.getLogger(__name__)


def read_manifest(out: str) -> dict[str, Any] | None:
    return manifest.read_manifest(out)


def finished_result(stage: Stage, run_root: str, preset: str = "tiny", overrides: Sequence[str] = (),
                    parent_run_id: str | None = None, **options: Any) -> dict[str, Any] | None:
    """The stage's result (status "skipped") when its output is already finished for these inputs and
    settings, decided by the stage's own skip check run in this process (`manifest.check_only`); None
    when it has to run.

    Lets a pipeline that hands stages to workers skip a finished one without starting a flow run (a process
    or a pod) for it. Anything that stops the check here (a device this machine lacks, a lease held by a
    live writer) also answers None, as does a multi-process stage whose settings count its processes (the
    global batch): the stage then runs where it was meant to and decides for itself."""
    if read_manifest(stage_dir(run_root, stage.name)) is None:  # never finished: no component to import
        return None
    try:
        return run_stage(stage, run_root, preset, overrides, parent_run_id, check_only=True, **options)
    except manifest.NotComplete:
        return None
    except Exception as exc:  # the stage's own run will report it, in its own environment
        log.info("stage %s: cannot check here whether it is finished (%s: %s); it runs", stage.name,
                 type(exc).__name__, exc)
        return None


def describe(stage: Stage, run_root: str, before: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """The stage's result as plain data: status, duration, manifest checksum, output URIs, MLflow run."""
    out = stage_dir(run_root, stage.name)
    manifest_uri = storage.join(out, manifest.MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise RuntimeError(f"stage '{stage.name}' finished without writing {manifest_uri}")
    manifest_bytes = storage.read_bytes(manifest_uri)
    after = storage.read_json(manifest_uri)
    run_id = after.get("mlflow_run_id")
    run = tracking.find_run(run_id) if run_id else None
    registered = after.get("registered_model")  # {name, version} when the stage registered one
    if run_id and run is None:  # a finished folder from another tracking store: its numbers stay in the folder
        log.warning("stage %s: its MLflow run %s is not in this tracking store (%s); the report links no run and "
                    "no registered model", stage.name, run_id, tracking.tracking_uri())
        registered = None  # a version number in this store's registry would be another model
    return {
        "stage": stage.name,
        "status": "skipped" if before == after else "ran",
        "seconds": round(seconds, 2),
        "out": out,
        "manifest": manifest_uri,
        "manifest_sha256": storage.sha256_bytes(manifest_bytes),
        "config_hash": after.get("config_hash"),
        "outputs": {rel: storage.join(out, rel) for rel in stage.outputs},
        "mlflow_run_id": run_id,
        "mlflow_url": tracking.run_url(tracking.Run(run_id, run["experiment_id"])) if run else None,
        "metrics": run["metrics"] if run else {},
        # What a reader must know beside a number (tags `note.<metric>`, e.g. a random LPIPS backbone).
        "notes": {tag.removeprefix("note."): text for tag, text in (run["tags"] if run else {}).items()
                  if tag.startswith("note.")},
        "registered_model": registered,
    }


def run_stage(
    stage: Stage,
    run_root: str,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    check_only: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Call the stage's component function on `run_root/<stage>` and describe the result.

    When the stage's preset asks for several processes, the same call runs as a torchrun job whose
    output goes to `logger` (the flow run's logger under Prefect). `check_only`: in this process, up to
    the stage's skip check only (`finished_result`).
    """
    logger = logger or log
    unknown = set(options) - set(stage.options)
    assert not unknown, f"stage {stage.name} takes no option {sorted(unknown)}"
    out = stage_dir(run_root, stage.name)
    before = read_manifest(out)
    arguments = {**stage.extra, **stage.arguments(run_root, **options)}
    component_overrides = split_overrides(overrides)[stage.component]
    started = time.monotonic()
    processes = 1 if check_only else stage.processes(preset, component_overrides)
    if processes > 1:
        command = stage.command(preset, component_overrides, parent_run_id, out=out, **arguments)
        launch.torchrun(stage.name, processes, command, logger)
    else:
        with manifest.check_only() if check_only else contextlib.nullcontext():
            stage.load()(out=out, preset=preset, overrides=component_overrides, parent_run_id=parent_run_id,
                         **arguments)
    result = describe(stage, run_root, before, time.monotonic() - started)
    logger.info("stage %s %s in %.1fs (processes: %d): %s", stage.name, result["status"], result["seconds"],
                processes, out)
    return result
