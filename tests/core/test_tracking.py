"""MLflow tracking: nested stage runs across processes, against a real server and the local default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.core import tracking

ROOT = Path(__file__).resolve().parents[2]

CHILD_STAGE = """
from components.core import tracking
with tracking.stage_run("child-stage", params={"model": {"width": 8}, "preset": "tiny"}) as run:
    for step in range(3):
        run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    run.log_dict({"psnr": 30.5}, "metrics/summary.json")
print(run.run_id)
"""


def run_child(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD_STAGE], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_stage_in_another_process_nests_under_parent(tracking_server):
    parent = tracking.start_run("pipeline")
    child_id = run_child({"T2V_PARENT_RUN_ID": parent.run_id, "MLFLOW_TRACKING_URI": tracking_server})
    parent.finish()

    children = tracking.child_runs(parent.run_id)
    assert [c["run_id"] for c in children] == [child_id]
    child = children[0]
    assert child["name"] == "child-stage" and child["status"] == "FINISHED"
    assert child["params"] == {"model.width": "8", "preset": "tiny"}
    assert tracking.metric_history(child_id, "loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert tracking.list_artifacts(child_id, "metrics") == ["metrics/summary.json"]
    assert tracking.get_run(parent.run_id)["status"] == "FINISHED"


def test_failed_stage_is_marked_failed(tracking_server):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("broken") as run:
            raise RuntimeError("boom")
    assert tracking.get_run(run.run_id)["status"] == "FAILED"


def test_register_model_with_lineage_tags(tracking_server, tmp_path):
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    with tracking.stage_run("train") as run:
        run.log_artifact(weights, "model")
    version = tracking.register_model("t2v-test-model", run, "model", tags={"phase1_run": "abc"})
    assert int(version) >= 1


def test_local_default_needs_no_server(local_tracking):
    with tracking.stage_run("offline", params={"a": 1}) as run:
        run.log_metrics({"x": 2.0}, step=1)
    assert (local_tracking / "mlflow.db").is_file()
    assert tracking.get_run(run.run_id)["metrics"] == {"x": 2.0}


def _run_with(tags: dict[str, str]) -> dict:
    return {"tags": tags}


def test_owner_is_alive_reads_host_pid_and_heartbeat():
    import socket
    import time

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    now, here = f"{time.time():.0f}", socket.gethostname()
    owner = {tracking.HOST_TAG: here, tracking.PID_TAG: str(os.getpid()), tracking.HEARTBEAT_TAG: now}
    assert tracking.owner_is_alive(_run_with(owner), stale_after_s=60)
    assert not tracking.owner_is_alive(_run_with({**owner, tracking.PID_TAG: str(finished.pid)}), 60)  # gone
    assert not tracking.owner_is_alive(_run_with({**owner, tracking.HEARTBEAT_TAG: str(time.time() - 61)}), 60)
    elsewhere = {**owner, tracking.HOST_TAG: f"not-{here}", tracking.PID_TAG: str(finished.pid)}
    assert tracking.owner_is_alive(_run_with(elsewhere), 60)  # another host: only the heartbeat tells
    assert not tracking.owner_is_alive(_run_with({tracking.HOST_TAG: here}), 60)  # never beat


def test_heartbeat_tags_the_run_while_the_block_runs(tracking_server):
    import time

    run = tracking.start_run("beating", tags={tracking.HEARTBEAT_TAG: "0"})
    with tracking.heartbeat(run, every_s=0.05):
        deadline = time.monotonic() + 30
        while tracking.get_run(run.run_id)["tags"][tracking.HEARTBEAT_TAG] == "0":
            assert time.monotonic() < deadline, "no heartbeat recorded"
            time.sleep(0.05)
    assert abs(float(tracking.get_run(run.run_id)["tags"][tracking.HEARTBEAT_TAG]) - time.time()) < 30


def test_mark_killed_ends_the_run_and_its_running_children(tracking_server):
    parent = tracking.start_run("dead-parent")
    done = tracking.start_run("done-child", parent_run_id=parent.run_id)
    done.finish()
    running = tracking.start_run("running-child", parent_run_id=parent.run_id)
    tracking.mark_killed(parent.run_id, {"why": "test"})
    assert [(run["status"], run["tags"].get("why")) for run in map(tracking.get_run, (parent.run_id, running.run_id))] \
        == [("KILLED", "test")] * 2
    assert tracking.get_run(done.run_id)["status"] == "FINISHED"
    running.reopen()  # a resumed stage continues its run
    assert tracking.get_run(running.run_id)["status"] == "RUNNING"
