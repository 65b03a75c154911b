"""The tiny pipeline end to end, the way it runs in production: deployments from prefect.yaml on a
real Prefect server, run by a process worker; MLflow server for tracking; S3 (moto) as artifact store.

One pipeline run (data -> VAE -> latents -> five DiT stages -> DiT eval) is shared by the assertions; a
second run must skip every stage; then the DiT stages from stage 3 on are run again, killed during stage 3
and resumed with each stage in a flow run (process) of its own, and must end with the same DiT weights as
the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from components.core import manifest, storage, tracking
from components.core.training.checkpoint import INDEX_FILE, checkpoint_uri, list_checkpoints
from flows.stages import DIT_STAGES, chain
from tests.e2e.conftest import REPO, Stack
from tests.killing import kill_when_file_appears
from tests.quick_pipeline import PARAMETERS
from tests.servers import chromium

pytestmark = pytest.mark.slow

FINAL_WEIGHTS = f"dit-stage{DIT_STAGES}/model_ema/diffusion_pytorch_model.safetensors"
STAGES = [stage.name for stage in chain()]
RERUN = STAGES[STAGES.index("dit-stage3"):]  # what the killed run runs again


def _parent_runs(run_root: str) -> list[dict]:
    """The pipeline's MLflow parent runs for `run_root`, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`t2v.run_root` = '{run_root}'",
                              order_by=["start_time ASC"])
    return [tracking.get_run(run.info.run_id) for run in runs]


def _stage_flow_runs(stack: Stack, pipeline_flow_run: str) -> list[str]:
    """The flows of the flow runs a pipeline flow run started, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_flow_run])), sort=FlowRunSort.START_TIME_ASC)
        return [client.read_flow(run.flow_id).name for run in runs]


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> str:
    """The pipeline as one flow run of deployment t2v-full/local on the process pool."""
    run_root = f"{stack.bucket}/full"
    proc = stack.run_deployment("t2v-full/local", {**PARAMETERS, "run_root": run_root})
    assert proc.returncode == 0, f"pipeline failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return run_root


def test_every_stage_leaves_a_verified_manifest(first_run, stack_env):
    for name in STAGES:
        found = manifest.read_manifest(storage.join(first_run, name))
        assert found is not None, f"no manifest for stage {name}"
        assert found["stage"] == name or name.startswith(found["stage"])
        for rel, entry in found["files"].items():
            uri = entry["uri"] if entry["uri"].startswith("s3://") else storage.join(first_run, name, entry["uri"])
            assert uri.startswith(f"{first_run}/{name}/"), rel
            storage.read_bytes(uri, expected_sha256=entry["sha256"])  # raises on mismatch
    report = storage.read_text(storage.join(first_run, "report.md"))
    assert "t2v-full: completed" in report
    for name in STAGES:
        assert f"| {name} | **ran** |" in report


def test_mlflow_shows_the_run_as_one_tree(first_run, stack_env):
    (parent,) = _parent_runs(first_run)
    assert parent["name"] == "t2v-full" and parent["status"] == "FINISHED"
    assert parent["params"]["preset"] == "tiny"
    assert json.loads(parent["params"]["overrides"]) == PARAMETERS["overrides"]
    assert parent["params"]["stage_deployment"] == "None"
    children = tracking.child_runs(parent["run_id"])
    assert [child["name"] for child in children] == STAGES
    for name, child in zip(STAGES, children, strict=True):
        assert child["status"] == "FINISHED"
        stage_manifest = storage.read_bytes(storage.join(first_run, name, "manifest.json"))
        # Each stage's manifest names its run, and the parent carries the manifest's checksum.
        assert json.loads(stage_manifest)["mlflow_run_id"] == child["run_id"]
        assert parent["tags"][f"manifest.{name}.sha256"] == storage.sha256_bytes(stage_manifest)
        assert parent["tags"][f"stage.{name}.status"] == "ran"


def test_the_vae_is_registered_once_with_its_lineage(first_run, stack_env):
    from mlflow.tracking import MlflowClient

    (parent,) = _parent_runs(first_run)[:1]
    runs = {child["name"]: child["run_id"] for child in tracking.child_runs(parent["run_id"])}
    versions = MlflowClient(tracking.tracking_uri()).search_model_versions(f"run_id = '{runs['vae-phase2']}'")
    assert [version.name for version in versions] == ["t2v-vae"]
    tags = tracking.model_version("t2v-vae", versions[0].version)["tags"]
    assert tags["lineage.phase1_run_id"] == runs["vae-phase1"]  # from the trainer
    assert tags["lineage.pipeline_run_id"] == parent["run_id"]  # from the pipeline
    assert tags["lineage.vae-phase2_run_id"] == runs["vae-phase2"]
    for name in ("synth", "filter", "shard", "vae-phase1"):
        assert tags[f"lineage.{name}_manifest_sha256"] == parent["tags"][f"manifest.{name}.sha256"]


def test_each_dit_stage_is_registered_under_its_alias(first_run, stack_env):
    (parent,) = _parent_runs(first_run)[:1]
    runs = {child["name"]: child["run_id"] for child in tracking.child_runs(parent["run_id"])}
    for number in range(1, DIT_STAGES + 1):
        version = tracking.registered_version(f"models:/t2v-dit@stage{number}")
        assert version["run_id"] == runs[f"dit-stage{number}"]
        assert version["tags"]["lineage.pipeline_run_id"] == parent["run_id"]
        assert version["tags"]["folder"] == f"{first_run}/dit-stage{number}"  # where sampling finds it
        if number > 1:  # the handoff: stage k starts from stage k - 1 (its manifest in the inputs)
            inputs = storage.read_json(storage.join(first_run, f"dit-stage{number}", "manifest.json"))["inputs"]
            previous = storage.read_bytes(storage.join(first_run, f"dit-stage{number - 1}", "manifest.json"))
            assert inputs["init"]["sha256"] == storage.sha256_bytes(previous)


def test_the_dit_eval_reports_adherence_and_validation_loss(first_run, stack_env):
    metrics = storage.read_json(storage.join(first_run, "dit-eval", "metrics.json"))
    assert set(metrics["adherence"]["accuracy"]) == {"background", "colour", "direction"}
    assert len(metrics["val_loss"]["loss"]) == 10  # per fixed timestep
    assert len(metrics["protocol"]["prompts"]) == 4
    summary = storage.read_text(storage.join(first_run, "dit-eval", "summary.md"))
    assert "Prompt adherence" in summary


def test_prefect_report_artifact(first_run, stack_env):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import REPORT_KEY

    with temporary_settings({PREFECT_API_URL: stack_env.prefect_api}), get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
        reports = [a for a in artifact if a.key == REPORT_KEY]
    assert reports, "no t2v-full-report artifact"
    assert any(first_run in str(a.data) for a in reports)


def test_prefect_logs_show_vae_training_progress(first_run, stack_env):
    """The VAE phase-1 stage's flow run logs its steps (first, last, and one every few seconds between)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (parent,) = _parent_runs(first_run)[:1]
    pipeline_flow_run = parent["tags"]["prefect.flow_run_id"]
    with temporary_settings({PREFECT_API_URL: stack_env.prefect_api}), get_client(sync_client=True) as client:
        stage_flow = client.read_flow_by_name("t2v-vae-phase1")
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_flow_run])))
        (stage_run,) = [run for run in subflows if run.flow_id == stage_flow.id]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[stage_run.id])))
    steps = [log.message for log in logs if log.message.startswith("vae-phase1: step ")]
    assert steps, [log.message for log in logs]
    assert steps[0].startswith("vae-phase1: step 1/4 (25%), loss=")
    assert steps[-1].startswith("vae-phase1: step 4/4 (100%), loss=") and " step/s, elapsed " in steps[-1]
    assert len(steps) <= 4


def test_second_run_skips_every_stage(first_run, stack: Stack, stack_env):
    before = {name: storage.read_bytes(storage.join(first_run, name, "manifest.json")) for name in STAGES}
    proc = stack.run_deployment("t2v-full/local", {**PARAMETERS, "run_root": first_run})
    assert proc.returncode == 0, f"second run failed:\n{proc.stdout[-6000:]}"
    parents = _parent_runs(first_run)
    assert len(parents) == 2
    second = parents[-1]
    assert second["status"] == "FINISHED"
    assert {name: second["tags"][f"stage.{name}.status"] for name in STAGES} == dict.fromkeys(STAGES, "skipped")
    assert tracking.child_runs(second["run_id"]) == []  # nothing ran, so no stage run was opened
    for name in STAGES:
        assert storage.read_bytes(storage.join(first_run, name, "manifest.json")) == before[name]
    assert "**skipped**" in storage.read_text(storage.join(first_run, "report.md"))


def test_killed_during_a_dit_stage_resumes_to_the_same_weights(first_run, stack: Stack, stack_env):
    run_root = first_run
    expected = storage.sha256_bytes(storage.read_bytes(f"{run_root}/{FINAL_WEIGHTS}"))
    for name in RERUN:  # as if the first run had stopped after DiT stage 2
        storage.delete_prefix(f"{run_root}/{name}/")
    stage3 = f"{run_root}/dit-stage3"
    # In-process run (`python -m flows run`), SIGKILLed by this test as soon as DiT stage 3's step-2
    # checkpoint is in the bucket: between two checkpoints, as the next one is the final step 4.
    sets = [arg for override in PARAMETERS["overrides"] for arg in ("--set", override)]
    log = stack.logs / "killed-run.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows", "run", "--run-root", run_root, "--num", str(PARAMETERS["num"]),
             "--seed", str(PARAMETERS["seed"]), *sets],
            cwd=REPO, env=stack.env, stdout=handle, stderr=subprocess.STDOUT)
    kill_when_file_appears(proc, lambda: storage.exists(f"{checkpoint_uri(stage3, 2)}/{INDEX_FILE}"), timeout=600,
                           log=log, poll_seconds=0.02)  # each poll is also an HTTP HEAD of a few ms
    assert proc.returncode == -9, log.read_text()[-4000:]
    found = [step for step, _ in list_checkpoints(stage3)]
    assert 4 not in found, f"the kill landed after the final checkpoint ({found}): it must fall between steps 2 and 4"
    assert manifest.read_manifest(stage3) is None
    assert found == [0, 2]

    # Started again on the worker, each stage a flow run of its own deployment (t2v-<stage>/local):
    # everything before stage 3 skips (checked in the pipeline's flow run: no flow run is started for a
    # finished stage), stage 3 resumes from its checkpoint (and its interrupted MLflow run).
    proc = stack.run_deployment("t2v-full/local-split", {**PARAMETERS, "run_root": run_root})
    assert proc.returncode == 0, f"resumed run failed:\n{proc.stdout[-6000:]}"
    crashed, resumed = _parent_runs(run_root)[-2:]
    assert [resumed["tags"][f"stage.{name}.status"] for name in STAGES] == (
        ["skipped"] * (len(STAGES) - len(RERUN)) + ["ran"] * len(RERUN))
    # Stages in other processes still nest under this pipeline run; resumed stage 3 keeps its first run.
    assert [child["name"] for child in tracking.child_runs(resumed["run_id"])] == RERUN[1:]
    assert _stage_flow_runs(stack_env, resumed["tags"]["prefect.flow_run_id"]) == [f"t2v-{name}" for name in RERUN]
    assert [child["name"] for child in tracking.child_runs(crashed["run_id"])] == ["dit-stage3"]
    # The killed run does not stay RUNNING: the rerun marked it KILLED and links both ways; the stage-3
    # run it left RUNNING was resumed and finished.
    assert (crashed["status"], crashed["tags"]["t2v.superseded_by"]) == ("KILLED", resumed["run_id"])
    assert resumed["tags"]["t2v.resumes"] == crashed["run_id"]
    assert [child["status"] for child in tracking.child_runs(crashed["run_id"])] == ["FINISHED"]
    assert storage.read_json(f"{stage3}/metrics.json")["resumes"] == 1
    assert storage.sha256_bytes(storage.read_bytes(f"{run_root}/{FINAL_WEIGHTS}")) == expected


def test_mlflow_ui_lists_the_pipeline_runs(first_run, stack_env):
    """What a user sees: the parent run's page in the MLflow UI lists every stage as a child run."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/ensure-system-deps.sh installs it as root)")
    parent = _parent_runs(first_run)[0]
    children = [child["name"] for child in tracking.child_runs(parent["run_id"])]
    url = f"{stack_env.mlflow_url}/#/experiments/{parent['experiment_id']}/runs/{parent['run_id']}"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1600,1000", "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120).stdout
    assert "t2v-full" in dom and "Child runs" in dom, dom[-2000:]
    # The page lists the ten newest child runs, then "Load more" (MLflow 3's run page).
    for name in children[-10:]:
        assert f">{name}<" in dom, f"child run {name} not shown on {url}"
    assert (len(children) > 10) == ("Load more" in dom)
