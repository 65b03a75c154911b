"""Exact resume: a run killed with SIGKILL and restarted ends with the same bits as an uninterrupted run.

Each run is its own process (`python -c`, single-threaded, CPU fp32) with the stand-in loader. The test
kills the trainer from the outside (SIGKILL) right after the step-5 checkpoint appears, so the kill lands
between two checkpoints (the next is the final one at step 10, five steps later) and the resumed run has
to replay steps from step 5, including the pending discriminator step's clip and reconstruction that the
step-5 checkpoint carries (step 4 was a generator step with the GAN on).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from components.core import tracking
from components.core.training import checkpoint
from tests.killing import kill_when_file_appears
from tests.vae.standin import write_fake_manifest

ROOT = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY = 10, 5  # about 0.2 s a step here: the kill has about 1 s to land in
OVERRIDES = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4",
             f"train.phase1.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.disc_start=2",
             "train.sample_every=100"]
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from tests.vae.standin import patch_loader
patch_loader()
from components.vae.train import train_vae
train_vae(1, sys.argv[1], sys.argv[2], overrides=sys.argv[3:])
"""


def _start(data: Path, out: Path, home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the trainer
        return subprocess.Popen([sys.executable, "-c", SCRIPT, str(data), str(out), *OVERRIDES], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT)


def _train(data: Path, out: Path, home: Path, log: Path) -> None:
    proc = _start(data, out, home, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def _checkpoints(out: Path) -> list[str]:
    return [f"step-{step}" for step, _ in checkpoint.list_checkpoints(out)]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, monkeypatch):
    home = tmp_path / "home"
    data = write_fake_manifest(tmp_path)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    _train(data, straight, home, tmp_path / "straight.log")
    proc = _start(data, interrupted, home, tmp_path / "killed.log")
    kill_when_file_appears(proc, interrupted / "checkpoints" / f"step-{CHECKPOINT_EVERY}" / checkpoint.INDEX_FILE, timeout=300,
                           log=tmp_path / "killed.log")
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    found = _checkpoints(interrupted)
    assert f"step-{STEPS}" not in found, (
        f"the kill landed after the next checkpoint ({found}): it must fall between step {CHECKPOINT_EVERY} "
        f"and step {STEPS}; make the steps slower (a bigger clip or model in OVERRIDES)")
    assert not (interrupted / "manifest.json").exists()  # a killed run leaves nothing that looks finished
    assert found == ["step-0", f"step-{CHECKPOINT_EVERY}"]
    _train(data, interrupted, home, tmp_path / "resumed.log")

    reference = checkpoint.read(str(straight / "checkpoints" / f"step-{STEPS}"))
    result = checkpoint.read(str(interrupted / "checkpoints" / f"step-{STEPS}"))
    for group in ("generator", "discriminator"):
        for name, value in reference[group].items():
            assert torch.equal(result[group][name], value), f"{group}.{name}"
    for name, value in reference["ema"]["shadow"].items():
        assert torch.equal(result["ema"]["shadow"][name], value), f"ema.{name}"
    for group in ("gen_optimizer", "disc_optimizer"):
        for index, state in reference[group]["state"].items():
            for key, value in state.items():
                assert torch.equal(result[group]["state"][index][key], value), f"{group}.{index}.{key}"
    assert result["loader"] == reference["loader"] and result["batches_drawn"] == reference["batches_drawn"]
    assert (straight / "model" / "model.safetensors").read_bytes() == (interrupted / "model" / "model.safetensors").read_bytes()

    # The resumed run continued the interrupted MLflow run and logged the resume as an event.
    events = (interrupted / "events.jsonl").read_text()
    assert '"event": "resume"' in events and f"step-{CHECKPOINT_EVERY}" in events
    monkeypatch.setenv("T2V_HOME", str(home))
    run = tracking.get_run(result["mlflow_run_id"])
    assert run["status"] == "FINISHED" and run["tags"]["resumed"] == "true"
