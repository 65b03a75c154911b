"""The `t2v-full` flow in-process against a real Prefect server, on the first stage only (seconds)."""

from __future__ import annotations

import pytest

from components.core import storage, tracking


@pytest.fixture()
def prefect_api(prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server


def test_pipeline_runs_then_skips_and_reports(tmp_path, local_tracking, prefect_api):
    from flows.pipeline import pipeline

    root = str(tmp_path / "run")
    first = pipeline(run_root=root, num=3, seed=1, until="synth")
    (synth,) = first["stages"]
    assert synth["status"] == "ran" and synth["metrics"]["num_clips"] == 3
    assert storage.exists(synth["outputs"]["annotations.json"])
    parent = tracking.get_run(first["mlflow_run_id"])
    assert parent["status"] == "FINISHED" and parent["params"]["preset"] == "tiny"
    assert parent["tags"]["manifest.synth.sha256"] == synth["manifest_sha256"]
    assert [child["name"] for child in tracking.child_runs(parent["run_id"])] == ["synth"]

    second = pipeline(run_root=root, num=3, seed=1, until="synth")
    assert [stage["status"] for stage in second["stages"]] == ["skipped"]
    assert tracking.get_run(second["mlflow_run_id"])["tags"]["stage.synth.status"] == "skipped"
    assert "| synth | **skipped** |" in storage.read_text(f"{root}/report.md")


def test_a_split_pipeline_skips_a_finished_stage_without_dispatching_it(tmp_path, local_tracking, prefect_api):
    """`stage_deployment` names no deployment here: any flow run handed to a worker would fail to start."""
    from flows.pipeline import StageFailed, pipeline

    root = str(tmp_path / "run")
    pipeline(run_root=root, num=3, seed=1, until="synth")
    before = storage.read_bytes(f"{root}/synth/manifest.json")
    split = pipeline(run_root=root, num=3, seed=1, until="synth", stage_deployment="nowhere")
    assert [stage["status"] for stage in split["stages"]] == ["skipped"]
    assert storage.read_bytes(f"{root}/synth/manifest.json") == before
    # Other settings: the stage's own check says it must run, so it is handed to its deployment.
    with pytest.raises(StageFailed, match="no deployment t2v-synth/nowhere on this Prefect server"):
        pipeline(run_root=root, num=3, seed=1, until="synth", stage_deployment="nowhere",
                 overrides=["data.synth.crf=20"])
    assert storage.read_bytes(f"{root}/synth/manifest.json") == before  # the check touched nothing


def test_a_failing_stage_fails_the_pipeline_with_its_message(tmp_path, local_tracking, prefect_api):
    from flows.pipeline import StageFailed, pipeline

    root = str(tmp_path / "run")
    annotations = tmp_path / "annotations.json"
    annotations.write_text('[{"path": "missing.mp4", "cap": "nothing"}]')
    with pytest.raises(StageFailed, match=r"stage 'filter' failed: ValueError: filter kept none of the 1 videos"):
        pipeline(run_root=root, annotations=str(annotations), until="filter")
    report = storage.read_text(f"{root}/report.md")
    assert "# t2v-full: failed" in report and "filter kept none of the 1 videos" in report
    assert not storage.exists(f"{root}/filter/manifest.json")


@pytest.mark.parametrize("override, complaint", [("synth.colour=red", "<component>.<key>=<value>"),
                                                 ("data.synth.colour=red", "unknown key 'synth.colour'"),
                                                 ("vae.train.lrr=1", "unknown key 'train.lrr'")])
def test_a_bad_override_fails_before_any_stage(tmp_path, local_tracking, prefect_api, override, complaint):
    from flows.pipeline import pipeline
    from flows.preflight import PreflightFailed

    with pytest.raises(PreflightFailed, match=complaint):
        pipeline(run_root=str(tmp_path / "run"), overrides=[override])
    assert not (tmp_path / "run").exists()
    assert not (local_tracking / "mlflow.db").exists()  # not even the pipeline's MLflow run was started


def _earlier_parent(run_root: str, **owner: str) -> tracking.Run:
    """A pipeline parent run left RUNNING on `run_root`, owned as `owner` says, with a RUNNING stage."""
    from flows.pipeline import RUN_ROOT_TAG

    parent = tracking.start_run("t2v-full", tags={RUN_ROOT_TAG: run_root, **tracking.owner_tags(), **owner})
    tracking.start_run("synth", parent_run_id=parent.run_id)
    return parent


def test_runs_left_running_by_dead_pipelines_are_marked_killed(tmp_path, local_tracking, prefect_api):
    import subprocess
    import sys
    import time

    from flows.pipeline import STALE_AFTER_S, pipeline
    from flows.stages import absolute_root

    root = str(tmp_path / "run")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    killed_here = _earlier_parent(absolute_root(root), **{tracking.PID_TAG: str(finished.pid)})
    silent_elsewhere = _earlier_parent(absolute_root(root), **{
        tracking.HOST_TAG: "another-host", tracking.HEARTBEAT_TAG: str(time.time() - STALE_AFTER_S - 1)})
    other_root = _earlier_parent(str(tmp_path / "other"), **{tracking.PID_TAG: str(finished.pid)})

    result = pipeline(run_root=root, num=3, seed=1, until="synth")
    new = tracking.get_run(result["mlflow_run_id"])
    assert new["status"] == "FINISHED"
    assert new["tags"]["t2v.resumes"] == f"{killed_here.run_id},{silent_elsewhere.run_id}"
    for earlier in (killed_here, silent_elsewhere):
        runs = [tracking.get_run(earlier.run_id), *tracking.child_runs(earlier.run_id)]
        assert [(run["status"], run["tags"]["t2v.superseded_by"]) for run in runs] == [("KILLED", new["run_id"])] * 2
    assert tracking.get_run(other_root.run_id)["status"] == "RUNNING"  # another run root: not ours to judge


def test_a_live_pipeline_keeps_its_run_root(tmp_path, local_tracking, prefect_api):
    from flows.pipeline import RunRootInUse, pipeline
    from flows.stages import absolute_root

    root = str(tmp_path / "run")
    live = _earlier_parent(absolute_root(root))  # this process, heartbeat now
    with pytest.raises(RunRootInUse, match=rf"run root .* is in use by pipeline run {live.run_id} \(process "):
        pipeline(run_root=root, num=3, seed=1, until="synth")
    assert tracking.get_run(live.run_id)["status"] == "RUNNING"
    assert not storage.exists(f"{root}/synth/manifest.json")
