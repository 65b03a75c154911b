"""Training and evaluation with every output on S3 (moto's server): checkpoints are listed, pruned and
resumed from S3, and the finished folders are self-describing there too."""

import pytest
import torch

from components.core import manifest, storage
from components.core.training import checkpoint
from components.vae.evaluate import evaluate_vae
from components.vae.train import train_vae
from tests.data.clips import ClipSpec, write_dataset
from tests.vae.standin import patch_loader, write_fake_manifest

FAST = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4",
        "train.phase1.steps=4", "train.checkpoint_every=2", "train.disc_start=1", "train.sample_every=100",
        "eval.resolution=32"]


@pytest.fixture(autouse=True)
def _standin_loader(monkeypatch):
    patch_loader(monkeypatch)


def test_train_resume_and_evaluate_on_s3(s3_bucket, tmp_path):
    data = write_fake_manifest(tmp_path)
    out = f"{s3_bucket}/vae/phase1"
    first = train_vae(1, str(data), out, overrides=FAST)
    assert manifest.read_manifest(out)["files"]["model/model.safetensors"]["uri"] == f"{out}/model/model.safetensors"
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [2, 4]  # keep_checkpoints=2 prunes step 0 on S3
    reference = checkpoint.read(f"{out}/checkpoints/step-4")

    # As if the process died after step 3: no manifest, no step-4 checkpoint. The re-run resumes from step 2.
    storage.delete(f"{out}/manifest.json")
    storage.delete_prefix(f"{out}/checkpoints/step-4")
    second = train_vae(1, str(data), out, overrides=FAST)
    assert second["mlflow_run_id"] == first["mlflow_run_id"] and not second["skipped"]
    resumed = checkpoint.read(f"{out}/checkpoints/step-4")
    for name, value in reference["generator"].items():
        assert torch.equal(resumed["generator"][name], value), name
    assert '"event": "resume"' in storage.read_text(f"{out}/events.jsonl")

    clips = write_dataset(tmp_path / "clips", [ClipSpec("a", 40, 48, 9, 8.0)])
    report = evaluate_vae(f"{out}/model", str(clips), f"{s3_bucket}/vae/eval", overrides=FAST)
    assert report["clips"] == 1
    assert storage.exists(f"{s3_bucket}/vae/eval/reconstruction.mp4")
    assert manifest.read_manifest(f"{s3_bucket}/vae/eval")["stage"] == "vae-eval"
