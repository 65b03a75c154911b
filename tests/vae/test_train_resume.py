"""Exact resume: a run killed with SIGKILL and restarted ends with the same bits as an uninterrupted run.

Each run is its own process (`python -c`, single-threaded, CPU fp32) with the stand-in loader; the kill
comes from the trainer's test hook (`T2V_VAE_TEST_KILL_AT_STEP`), a real SIGKILL at a step that is not a
checkpoint step, so the resumed run has to replay steps from the last checkpoint, including a pending
discriminator step's clip and reconstruction.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from components.core import tracking
from components.vae.trainer_state import load_checkpoint
from tests.vae.standin import write_fake_manifest

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4",
             "train.phase1.steps=8", "train.checkpoint_every=3", "train.disc_start=2", "train.sample_every=100"]
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from tests.vae.standin import patch_loader
patch_loader()
from components.vae.train import train_vae
train_vae(1, sys.argv[1], sys.argv[2], overrides=sys.argv[3:])
"""


def _train(data: Path, out: Path, home: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if kill_at is not None:
        env["T2V_VAE_TEST_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(out), *OVERRIDES], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, monkeypatch):
    home = tmp_path / "home"
    data = write_fake_manifest(tmp_path)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    done = _train(data, straight, home)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _train(data, interrupted, home, kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (interrupted / "manifest.json").exists()  # a killed run leaves nothing that looks finished
    assert sorted(p.name for p in (interrupted / "checkpoints").glob("*.pt")) == ["step-0.pt", "step-3.pt"]
    resumed = _train(data, interrupted, home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = load_checkpoint(str(straight / "checkpoints" / "step-8.pt"))
    result = load_checkpoint(str(interrupted / "checkpoints" / "step-8.pt"))
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
    assert '"event": "resume"' in events and "step-3.pt" in events
    monkeypatch.setenv("T2V_HOME", str(home))
    run = tracking.get_run(result["mlflow_run_id"])
    assert run["status"] == "FINISHED" and run["tags"]["resumed"] == "true"
