"""VAE training on two processes (torchrun, gloo on CPU) against one process over the same global batch.

Tolerance: two ranks compute the same global-batch losses and gradients as one process, up to float
summation order (gloo sums two half-batch means where one process takes one mean: ~1e-7 relative).
Adam divides every gradient element by its running RMS, so where a gradient is nearly zero (a bias
before a GroupNorm, for instance) that 1e-7 noise flips the sign of a whole lr-sized update: with the
presets' lr the weights of the two runs differ by up to 2·lr per step on such elements, which says
nothing. The tests therefore train at lr 1e-9, where a flipped update moves a weight by 2e-9: then every
loss term (reconstruction, LPIPS, KL, adaptive GAN weight, discriminator logits) must agree to 1e-5
relative and every weight (generator, discriminator with its batch-norm statistics, EMA) to 1e-6
absolute, while a real mistake (a wrong slice of the batch or of the posterior noise, per-rank batch
norm statistics, a per-rank adaptive weight) shows up as 1e-3 or more.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.core import manifest, storage
from components.core.training import checkpoint
from tests.vae.standin import write_fake_manifest

ROOT = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY = 10, 5
OVERRIDES = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4",
             f"train.phase1.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.disc_start=2",
             "train.sample_every=100", "train.lr=1e-9", "train.disc_lr=1e-9", "train.ema_decay=0.5",
             "launch.timeout_s=60"]


def _start(data: Path, out: Path | str, home: Path, log: Path, processes: int, batch: int,
           extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the trainer
        return subprocess.Popen([*launcher, "-m", "tests.vae.standin_train", str(data), str(out), *OVERRIDES,
                                 f"data.batch_size={batch}", *extra], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _train(data: Path, out: Path | str, home: Path, processes: int, batch: int, log: Path | None = None,
           extra: tuple[str, ...] = ()) -> None:
    log = log or out.parent / f"{out.name}.log"
    proc = _start(data, out, home, log, processes, batch, extra)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]


def _final(out: Path) -> dict:
    return checkpoint.read(str(out / "checkpoints" / f"step-{STEPS}"))


def _assert_close(result: dict, reference: dict, atol: float) -> None:
    for group in ("generator", "discriminator"):
        for name, value in reference[group].items():
            assert torch.allclose(result[group][name].double(), value.double(), rtol=0, atol=atol), f"{group}.{name}"
    for name, value in reference["ema"]["shadow"].items():
        assert torch.allclose(result["ema"]["shadow"][name], value, rtol=0, atol=atol), f"ema.{name}"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One 2-process run (batch 1 per rank) to the end: the reference of every test here."""
    root = tmp_path_factory.mktemp("dist")
    data, home = write_fake_manifest(root), root / "home"
    _train(data, root / "two", home, processes=2, batch=1)
    return data, home, root / "two"


def test_two_processes_match_one_process_with_the_global_batch(two_processes, tmp_path):
    data, home, two = two_processes
    one = tmp_path / "one"
    _train(data, one, home, processes=1, batch=2)
    _assert_close(_final(one), _final(two), atol=1e-6)
    losses_two = manifest.read_manifest(two)["metrics"]["final_losses"]
    losses_one = manifest.read_manifest(one)["metrics"]["final_losses"]
    assert set(losses_two) == set(losses_one) >= {"rec", "lpips", "kl", "d_weight", "disc", "logits_real"}
    for name, value in losses_one.items():
        assert losses_two[name] == pytest.approx(value, rel=1e-5), name
    # Only rank 0 writes the artifact; each rank logs to its own file.
    written = manifest.read_manifest(two)
    assert written["processes"] == 2 and written["config_hash"] == manifest.read_manifest(one)["config_hash"]
    assert sorted(p.name for p in (two / "logs").iterdir()) == ["rank-0.log", "rank-1.log"]
    assert "rank1 INFO" in (two / "logs" / "rank-1.log").read_text()
    assert _final(two)["ranks"][1]["rng"]["torch"].shape == _final(two)["ranks"][0]["rng"]["torch"].shape


def _stopped_after_first_checkpoint(reference: Path, copy: Path) -> Path:
    """The reference output as it was right after the step-5 checkpoint (the run stopped there)."""
    shutil.copytree(reference, copy)
    for name in ("manifest.json", "metrics.json", "model", "model_raw", f"checkpoints/step-{STEPS}"):
        target = copy / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return copy


def test_saved_at_two_processes_resumes_at_one(two_processes, tmp_path):
    """Resuming at two processes (bit for bit) is the last test's second half."""
    data, home, two = two_processes
    out = _stopped_after_first_checkpoint(two, tmp_path / "resumed")
    saved = checkpoint.read(str(out / "checkpoints" / f"step-{CHECKPOINT_EVERY}"))
    assert saved["ranks"][0]["pending"] is not None  # a discriminator step's pair is split over the ranks
    _train(data, out, home, processes=1, batch=2)
    result, reference = _final(out), _final(two)
    _assert_close(result, reference, atol=1e-6)
    assert result["loader"] == reference["loader"] and result["batches_drawn"] == reference["batches_drawn"]
    assert result["step"] == STEPS and '"event": "resume"' in (out / "events.jsonl").read_text()


def test_a_killed_rank_fails_the_job_quickly_and_a_rerun_resumes(two_processes, tmp_path):
    data, home, two = two_processes
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = _start(data, out, home, log, processes=2, batch=1)
    try:
        first = out / "checkpoints" / f"step-{CHECKPOINT_EVERY}" / checkpoint.INDEX_FILE
        deadline = time.monotonic() + 300
        while not first.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.005)
        rank_log = (out / "logs" / "rank-1.log").read_text()
        os.kill(int(rank_log.split("pid ", 1)[1].split(")", 1)[0]), signal.SIGKILL)  # like the OOM killer
        killed = time.monotonic()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code != 0 and time.monotonic() - killed < 60, output[-3000:]
    assert "rank      : 1" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]
    assert not (out / "manifest.json").exists() and not (out / "checkpoints" / f"step-{STEPS}").exists()
    _train(data, out, home, processes=2, batch=1)  # resumes at two processes: bit for bit
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["from_checkpoint"] for e in events if e["event"] == "resume"] == [
        checkpoint.checkpoint_uri(out, CHECKPOINT_EVERY)]
    _assert_close(_final(out), _final(two), atol=0)
    assert (out / "model" / "model.safetensors").read_bytes() == (two / "model" / "model.safetensors").read_bytes()


def test_two_processes_checkpoint_and_resume_on_s3(two_processes, s3_bucket, tmp_path):
    """Each rank uploads its own shards; the index goes last; a resume downloads them again."""
    data, home, _ = two_processes
    out, short = f"{s3_bucket}/vae", ("train.phase1.steps=4", "train.checkpoint_every=2")
    _train(data, out, home, processes=2, batch=1, log=tmp_path / "first.log", extra=short)
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [2, 4]  # step 0 pruned: keep 2
    names = {uri.rsplit("/", 1)[1] for uri in storage.list_files(checkpoint.checkpoint_uri(out, 4))}
    assert {"__0_0.distcp", "__1_0.distcp", "rank-0.pt", "rank-1.pt", ".metadata", checkpoint.INDEX_FILE} <= names
    reference = checkpoint.read(checkpoint.checkpoint_uri(out, 4))
    storage.delete(f"{out}/manifest.json")
    storage.delete_prefix(checkpoint.checkpoint_uri(out, 4))
    _train(data, out, home, processes=2, batch=1, log=tmp_path / "resumed.log", extra=short)
    _assert_close(checkpoint.read(checkpoint.checkpoint_uri(out, 4)), reference, atol=0)
