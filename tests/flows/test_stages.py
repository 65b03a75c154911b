"""The stage registry and the runner, without Prefect: routing, chains, skip detection."""

from __future__ import annotations

import pytest

from components.core import storage, tracking
from flows import report, runner
from flows.stages import BY_NAME, STAGES, Stage, absolute_root, chain, default_run_root, split_overrides
from tests.flows import fake_stage

FAKE = Stage("fake", "data", "tests.flows.fake_stage:make", lambda run_root, value=1: {"value": value},
             options=("value",), outputs=("value.txt",))


def test_chain_starts_with_synth_or_ingests_and_stops_at_until():
    names = [stage.name for stage in STAGES]
    assert names[0] == "synth"
    assert [stage.name for stage in chain()] == names
    assert [stage.name for stage in chain(annotations="s3://b/ann.json")] == names[1:]
    assert [stage.name for stage in chain(until="synth")] == ["synth"]
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        chain(until="nope")


def test_every_stage_names_a_component_and_a_flow():
    from flows.stage_flows import STAGE_FLOWS

    assert set(STAGE_FLOWS) == set(BY_NAME)
    for stage in STAGES:
        assert STAGE_FLOWS[stage.name].name == f"t2v-{stage.name}"
        assert callable(stage.load())


def test_overrides_are_routed_to_their_component():
    routed = split_overrides(["data.synth.bad_fraction=0.1", "vae.train.max_steps=3", "data.filter.x=[1, 2]"])
    assert routed["data"] == ["synth.bad_fraction=0.1", "filter.x=[1, 2]"]
    assert routed["vae"] == ["train.max_steps=3"]
    assert routed["dit"] == []
    for bad in ("synth.bad_fraction=0.1", "bad_fraction=0.1", "data.synth.bad_fraction"):
        with pytest.raises(ValueError, match="<component>.<key>=<value>"):
            split_overrides([bad])


def test_run_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_HOME", str(tmp_path / "home"))
    assert default_run_root("tiny") == str(tmp_path / "home" / "runs" / "tiny")
    assert default_run_root("v1.2") == str(tmp_path / "home" / "runs" / "v1.2")  # not `v1`: named as the preset
    assert default_run_root("my/presets/big.yaml") == str(tmp_path / "home" / "runs" / "big")
    assert absolute_root("s3://bucket/runs/a/") == "s3://bucket/runs/a"
    monkeypatch.chdir(tmp_path)
    assert absolute_root("rel/run") == str(tmp_path / "rel" / "run")


def test_runner_reports_ran_then_skipped(tmp_path, local_tracking):
    root = str(tmp_path / "run")
    parent = tracking.start_run("t2v-full")
    first = runner.run_stage(FAKE, root, "tiny", ["data.a=1", "vae.b=2"], parent.run_id, value=7)
    assert first["status"] == "ran"
    assert first["outputs"] == {"value.txt": f"{root}/fake/value.txt"}
    assert first["metrics"] == {"value": 7.0}
    assert first["manifest_sha256"] == storage.sha256_bytes(storage.read_bytes(first["manifest"]))
    assert fake_stage.CALLS[-1] == {"out": f"{root}/fake", "value": 7, "overrides": ["a=1"],
                                    "parent_run_id": parent.run_id}
    assert tracking.get_run(first["mlflow_run_id"])["tags"]["mlflow.parentRunId"] == parent.run_id

    again = runner.run_stage(FAKE, root, "tiny", ["data.a=1"], None, value=7)
    assert again["status"] == "skipped"
    assert again["mlflow_run_id"] == first["mlflow_run_id"]  # the run that made the artifact
    changed = runner.run_stage(FAKE, root, "tiny", ["data.a=2"], None, value=7)
    assert changed["status"] == "ran" and changed["config_hash"] != first["config_hash"]


def test_a_finished_folder_from_another_tracking_store_is_skipped_without_its_run(tmp_path, local_tracking,
                                                                                    monkeypatch, caplog):
    root = str(tmp_path / "run")
    first = runner.run_stage(FAKE, root, value=7)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")  # a copied run root
    again = runner.run_stage(FAKE, root, value=7)
    assert again["status"] == "skipped" and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert again["mlflow_url"] is None and again["metrics"] == {} and again["registered_model"] is None
    assert f"its MLflow run {first['mlflow_run_id']} is not in this tracking store" in caplog.text


def test_runner_passes_a_stage_error_through(tmp_path, local_tracking):
    with pytest.raises(ValueError, match="value must be >= 0"):
        runner.run_stage(FAKE, str(tmp_path), value=-1)
    with pytest.raises(AssertionError, match="takes no option"):
        runner.run_stage(FAKE, str(tmp_path), colour="red")


def test_report_table(tmp_path, local_tracking):
    results = [
        {"stage": "synth", "status": "ran", "seconds": 1.25, "manifest": "s3://b/r/synth/manifest.json",
         "outputs": {"annotations.json": "s3://b/r/synth/annotations.json"}, "mlflow_run_id": "abcdef123456",
         "mlflow_url": "http://mlflow/#/experiments/1/runs/abcdef123456", "out": "s3://b/r/synth",
         "metrics": {"num_clips": 12.0, "num_good": 10.0, "defect.static": 1.0}},
        {"stage": "filter", "status": "failed", "seconds": 0.5},
    ]
    text = report.markdown("s3://b/r", results, {"run_id": "parent1", "url": None}, error="stage 'filter' failed: x")
    assert text.startswith("# t2v-full: failed")
    assert ("| synth | **ran** | 1.2 | num_clips=12, num_good=10 | `s3://b/r/synth/manifest.json`<br>"
            "`s3://b/r/synth/annotations.json` | [open in MLflow](http://mlflow/#/experiments/1/runs/abcdef123456) |"
            ) in text
    assert "| filter | **failed** | 0.5 | – | – | – |" in text
    assert "stage 'filter' failed: x" in text
    # Without a tracking server: the full id, and how to look at it.
    assert (f"- MLflow parent run: `parent1` (see it with `mlflow ui --backend-store-uri "
            f"sqlite:///{local_tracking / 'mlflow.db'}`)") in text


def test_report_links_local_artifacts_and_notes_beside_numbers(tmp_path):
    root = tmp_path / "run"
    results = [{"stage": "vae-eval", "status": "ran", "seconds": 3.0, "out": f"{root}/vae-eval",
                "manifest": f"{root}/vae-eval/manifest.json", "outputs": {"metrics.json": f"{root}/vae-eval/metrics.json"},
                "mlflow_run_id": "0123456789abcdef", "mlflow_url": None,
                "metrics": {"eval/psnr": 21.5, "eval/lpips": 0.4},
                "notes": {"eval/lpips": "random alex backbone: not real LPIPS"}}]
    text = report.markdown(str(root), results, {"run_id": "p", "url": "http://127.0.0.1:5000/#/experiments/1/runs/p"})
    assert f"- run root: [{root}]({root.as_uri()})" in text
    assert "- MLflow parent run: [http://127.0.0.1:5000/#/experiments/1/runs/p](http://127.0.0.1:5000/#/" in text
    assert (f"| vae-eval | **ran** | 3.0 | eval/psnr=21.5, eval/lpips=0.4 (**random alex backbone: not real LPIPS**) | "
            f"[manifest.json]({root.as_uri()}/vae-eval/manifest.json)<br>"
            f"[metrics.json]({root.as_uri()}/vae-eval/metrics.json) | `0123456789abcdef` |") in text
