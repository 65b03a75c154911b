"""End to end on real WebDataset shards: `t2v vae train` (CLI) for phase 1, then phase 2 and the evaluation
on the same shards (in-process, to keep the test short)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core import manifest, tracking
from components.core.training import checkpoint
from components.data.shard import shard
from components.vae.evaluate import evaluate_vae
from components.vae.train import train_vae
from tests.data.clips import ClipSpec, write_dataset

ROOT = Path(__file__).resolve().parents[2]
FAST = ["model.hidden_size=8", "data.bucket=9x64x64", "train.discriminator.base_channels=4", "train.phase1.steps=4",
        "train.phase2.steps=2", "train.disc_start=1", "train.checkpoint_every=2", "eval.resolution=32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(home), "OMP_NUM_THREADS": "1"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("T2V_PARENT_RUN_ID", None)
    return environment


@pytest.fixture(scope="module")
def shards(tmp_path_factory, env):
    """Three 12-frame 64×64 clips at 8 fps -> the tiny preset's 9x64x64 bucket."""
    root = tmp_path_factory.mktemp("data")
    annotations = write_dataset(root / "clips", [ClipSpec(f"clip{i}", 64, 64, 12, 8.0) for i in range(3)])
    # The shard tests' own preset (8 fps tiny buckets), so tuning the data component's tiny preset does not move this.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T2V_HOME", env["T2V_HOME"])
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        shard(annotations, root / "shards", preset=str(ROOT / "tests" / "data" / "shard_preset.yaml"))
    return root / "shards"


def _cli(env, group, *args):
    done = subprocess.run([sys.executable, "-m", f"components.{group}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _sets():
    return [arg for override in FAST for arg in ("--set", override)]


def test_train_both_phases_and_evaluate_on_shards(shards, env, tmp_path, monkeypatch):
    assert [b["name"] for b in manifest.read_manifest(shards)["buckets"]] == ["9x64x64"]
    phase1 = _cli(env, "vae", "train", "--phase", "1", "--data", str(shards), "--out", str(tmp_path / "p1"), *_sets())
    assert phase1["steps"] == 4 and phase1["stage"] == "vae-phase1"
    final = checkpoint.read(str(tmp_path / "p1" / "checkpoints" / "step-4"))
    # Three clips, batch 1: the loader's (epoch, step) position is in the checkpoint and wrapped to epoch 1.
    assert final["loader"] == {"epoch": 1, "step": 0} and final["batches_drawn"] == 3  # 3 generator steps (G, G, D, G)
    assert all(torch.isfinite(v).all() for v in final["generator"].values())

    monkeypatch.setenv("T2V_HOME", env["T2V_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    phase2 = train_vae(2, str(shards), str(tmp_path / "p2"), init=str(tmp_path / "p1"), overrides=FAST)
    assert phase2["steps"] == 2
    tags = tracking.get_run(phase2["mlflow_run_id"])["tags"]
    assert tags["lineage.phase1_run_id"] == phase1["mlflow_run_id"]

    report = evaluate_vae(str(tmp_path / "p2" / "model"), str(shards), str(tmp_path / "eval"), overrides=FAST)
    assert report["clips"] == 3 and 0 < report["psnr"] < 100 and 0 < report["ssim"] < 1
