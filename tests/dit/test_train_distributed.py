"""DiT training across processes: 2 ranks (torchrun, gloo, FSDP2) against 1 process over the same global
batch, exact resume after a SIGKILL from outside, and a checkpoint of 2 ranks resumed by 1.

Every run is its own `t2v dit train` (`python -m components.dit train`, or each rank under torchrun;
single-threaded, CPU fp32) on the latent folder `t2v dit encode` makes of the data tests' clips
(`cached_latents`), stage 1 widened to images and video (1x32x32, 1x64x64, 9x32x32, 9x48x80; RoPE scales
(1, 2, 2)), 12 steps (3 epochs of 4), checkpoints every 4. Each bucket's batch is capped by
max_batch_size (1 per rank on 2 ranks, 2 on 1), so both runs see the same global batches of 2.

Tolerance: as in the VAE's test (tests/vae/test_train_distributed.py), AdamW turns float summation noise on
near-zero gradients into lr-sized updates of either sign, so the runs compared across world sizes train at
lr 1e-8: then every weight and EMA shadow agrees to 1e-6 and every logged loss to 1e-5 relative, while a
wrong slice of the batch or of the noise moves the losses by 1e-2 or more.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core import manifest, tracking
from components.core.training import checkpoint
from tests.killing import kill_when_file_appears

ROOT = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY = 12, 4
OVERRIDES = ["train.stages.0.buckets=[1x32x32,1x64x64,9x32x32,9x48x80]", "train.stages.0.interpolation_scales=[1,2,2]",
             f"train.stages.0.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=2",
             "train.stages.0.lr=1e-8", "train.ema_decay=0.5", "launch.timeout_s=60"]
PER_RANK = {1: ["train.stages.0.batch_tokens=320", "train.stages.0.max_batch_size=2"],
            2: ["train.stages.0.batch_tokens=160", "train.stages.0.max_batch_size=1"]}


def _start(data: Path, out: Path, home: Path, log: Path, processes: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("T2V_PARENT_RUN_ID", None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the trainer
        return subprocess.Popen([*launcher, "-m", "components.dit", "train", "--stage", "1", "--data", str(data),
                                 "--out", str(out), *(f"--set={o}" for o in [*OVERRIDES, *PER_RANK[processes]])],
                                cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _train(data: Path, out: Path, home: Path, processes: int, log: Path | None = None) -> None:
    log = log or out.parent / f"{out.name}.log"
    proc = _start(data, out, home, log, processes)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]


def _final(out: Path) -> dict:
    return checkpoint.read(str(out / "checkpoints" / f"step-{STEPS}"))


def _assert_weights(result: dict, reference: dict, atol: float) -> None:
    for name, value in reference["model"].items():
        assert torch.allclose(result["model"][name], value, rtol=0, atol=atol), f"model.{name}"
    for name, value in reference["ema"]["shadow"].items():
        assert torch.allclose(result["ema"]["shadow"][name], value, rtol=0, atol=atol), f"ema.{name}"


def _losses(out: Path, home: Path, monkeypatch) -> list[tuple[int, float]]:
    monkeypatch.setenv("T2V_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.metric_history(manifest.read_manifest(out)["mlflow_run_id"], "train/loss")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cached_latents):
    """One run on 1 process and one on 2, to the end: the references of every test here."""
    root = tmp_path_factory.mktemp("dit-dist")
    data, home = cached_latents[0], root / "home"
    _train(data, root / "one", home, processes=1)
    _train(data, root / "two", home, processes=2)
    return data, home, root


def test_two_processes_match_one_process_with_the_global_batch(runs, monkeypatch):
    data, home, root = runs
    one, two = _final(root / "one"), _final(root / "two")
    _assert_weights(two, one, atol=1e-6)
    assert two["bucket_samples"] == one["bucket_samples"] == {name: 6 for name in ("1x32x32", "1x64x64", "9x32x32", "9x48x80")}
    losses_one, losses_two = _losses(root / "one", home, monkeypatch), _losses(root / "two", home, monkeypatch)
    assert [step for step, _ in losses_one] == [step for step, _ in losses_two] == list(range(2, STEPS + 1, 2))
    for (_, a), (_, b) in zip(losses_one, losses_two, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    # Sharded checkpoints (one DCP file per rank); only rank 0 writes the artifact; each rank logs to its file.
    names = {p.name for p in (root / "two" / "checkpoints" / f"step-{STEPS}").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", "rank-0.pt", "rank-1.pt"} <= names
    assert manifest.read_manifest(root / "two")["processes"] == 2
    assert manifest.read_manifest(root / "two")["config_hash"] == manifest.read_manifest(root / "one")["config_hash"]
    assert "rank1 INFO" in (root / "two" / "logs" / "rank-1.log").read_text()


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(runs, tmp_path):
    data, home, root = runs
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    kill_after = random.choice([CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY])  # the kill lands in the steps after it
    proc = _start(data, out, home, log, processes=1)
    kill_when_file_appears(proc, out / "checkpoints" / f"step-{kill_after}" / checkpoint.INDEX_FILE, timeout=300, log=log)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    found = [step for step, _ in checkpoint.list_checkpoints(out)]
    assert STEPS not in found, f"the kill landed after the last step ({found}): make the steps slower"
    assert not (out / "manifest.json").exists()  # a killed run leaves nothing that looks finished
    _train(data, out, home, processes=1, log=tmp_path / "resumed.log")
    result, reference = _final(out), _final(root / "one")
    _assert_weights(result, reference, atol=0)
    for index, state in reference["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(result["optimizer"]["state"][index][key], value), f"optimizer.{index}.{key}"
    for key in ("loader", "batches_drawn", "noise_rng", "bucket_samples"):
        assert torch.equal(result[key], reference[key]) if key == "noise_rng" else result[key] == reference[key], key
    for folder in ("model", "model_ema"):
        weights = f"{folder}/diffusion_pytorch_model.safetensors"
        assert (out / weights).read_bytes() == (root / "one" / weights).read_bytes(), weights
    assert '"event": "resume"' in (out / "events.jsonl").read_text()


def test_saved_at_two_processes_resumes_at_one(runs, tmp_path):
    data, home, root = runs
    out = tmp_path / "resumed"
    shutil.copytree(root / "two", out)
    for name in ("manifest.json", "metrics.json", "model", "model_ema", "conditioning.json", f"checkpoints/step-{STEPS}"):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [2 * CHECKPOINT_EVERY]
    _train(data, out, home, processes=1)
    _assert_weights(_final(out), _final(root / "two"), atol=1e-6)
    assert _final(out)["loader"] == _final(root / "two")["loader"]
    assert manifest.read_manifest(out)["processes"] == 1
