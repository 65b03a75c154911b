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


def test_a_failing_stage_fails_the_pipeline_with_its_message(tmp_path, local_tracking, prefect_api):
    from flows.pipeline import StageFailed, pipeline

    root = str(tmp_path / "run")
    with pytest.raises(StageFailed, match=r"(?s)stage 'synth' failed: ConfigError: .*unknown key 'synth.colour'"):
        pipeline(run_root=root, num=3, overrides=["data.synth.colour=red"], until="synth")
    report = storage.read_text(f"{root}/report.md")
    assert "# t2v-full: failed" in report and "unknown key 'synth.colour'" in report
    assert not storage.exists(f"{root}/synth/manifest.json")


def test_a_malformed_override_fails_before_any_stage(tmp_path, local_tracking, prefect_api):
    from flows.pipeline import pipeline

    with pytest.raises(ValueError, match="<component>.<key>=<value>"):
        pipeline(run_root=str(tmp_path / "run"), overrides=["synth.colour=red"])
    assert not (tmp_path / "run").exists()
