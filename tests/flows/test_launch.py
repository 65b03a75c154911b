"""A stage whose preset asks for two processes runs as a torchrun job from the flow runner: its output
goes to the runner's logger, each rank reads its own slice of real shards, and a failing rank fails the
stage with that rank's error."""

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.core import manifest
from components.core.training import checkpoint
from flows import launch, runner
from flows.stages import BY_NAME
from tests.vae.test_train_shards import FAST, ROOT, env, shards  # noqa: F401  (fixtures: real shards)

SETS = [f"vae.{override}" for override in FAST] + ["vae.launch.nproc_per_node=2", "vae.launch.timeout_s=60"]


def test_vae_phase1_runs_as_two_processes_on_shards(shards, env, tmp_path, monkeypatch, caplog):  # noqa: F811
    for name in ("T2V_HOME", "PYTHONPATH", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(shards, tmp_path / "shard")
    logger = logging.getLogger("test.flow-run")
    with caplog.at_level(logging.INFO, logger="test.flow-run"):
        result = runner.run_stage(BY_NAME["vae-phase1"], str(tmp_path), overrides=SETS, logger=logger)
    assert result["status"] == "ran" and manifest.read_manifest(result["out"])["processes"] == 2
    assert "torchrun --standalone --nproc-per-node=2" in caplog.text and "[default1]:" in caplog.text  # rank 1 streamed
    final = checkpoint.read(str(tmp_path / "vae-phase1" / "checkpoints" / "step-4"))
    # Three clips, global batch 2 (1 per rank): one global batch per epoch, the third clip carried over.
    assert final["loader"]["epoch"] == 3 and final["batches_drawn"] == 3 and len(final["ranks"]) == 2

    again = runner.run_stage(BY_NAME["vae-phase1"], str(tmp_path), overrides=SETS, logger=logger)
    assert again["status"] == "skipped"


def test_a_failing_rank_fails_the_stage_with_its_error(env, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with pytest.raises(launch.RankFailed, match=r"(?s)stage vae-phase1: rank \d of 2 failed \(exit code 2\).*"
                                                r"error: --data: no shard manifest at .*/shard/manifest.json"):
        runner.run_stage(BY_NAME["vae-phase1"], str(tmp_path), overrides=SETS)


def test_killing_the_launching_process_kills_the_job(tmp_path):
    """A flow process killed (SIGKILL: no clean-up) takes torchrun and every rank with it: no orphan trains on."""
    parent = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("rank-*.pid"))) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.05)
        ranks = [int(path.read_text()) for path in tmp_path.glob("rank-*.pid")]
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, f"ranks {[pid for pid in ranks if _alive(pid)]} outlived their launcher"
        time.sleep(0.05)


LAUNCHER = """
import logging, sys
from flows.launch import torchrun
torchrun("sleep", 2, ["tests.flows.sleeping_rank", sys.argv[1]], logging.getLogger("test"))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent's wait is missing
