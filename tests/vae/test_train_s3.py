"""Training and evaluation with every output on S3 (moto's server): checkpoints are listed, pruned and
resumed from S3, and the finished folders are self-describing there too."""

import pytest
import torch

from components.core import manifest, storage
from components.vae.evaluate import evaluate_vae
from components.vae.train import train_vae
from components.vae.trainer_state import list_checkpoints, load_checkpoint
from tests.data.clips import ClipSpec, write_dataset
from tests.vae.standin import patch_loader, write_fake_manifest

FAST = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4",
        "train.phase1.steps=4", "train.checkpoint_every=2", "train.disc_start=1", "train.sample_every=100",
        "eval.resolution=32"]


@pytest.fixture()
def s3_bucket(monkeypatch):
    """moto's S3 server in a thread on a free loopback port, and a bucket; yields the bucket's URI."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    storage.reset_clients()
    storage._s3_client().create_bucket(Bucket="vae-train")
    yield "s3://vae-train"
    storage.reset_clients()
    server.stop()


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2V_HOME", str(tmp_path_factory.getbasetemp() / "t2v-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("T2V_PARENT_RUN_ID", raising=False)
    patch_loader(monkeypatch)


def test_train_resume_and_evaluate_on_s3(s3_bucket, tmp_path):
    data = write_fake_manifest(tmp_path)
    out = f"{s3_bucket}/vae/phase1"
    first = train_vae(1, str(data), out, overrides=FAST)
    assert manifest.read_manifest(out)["files"]["model/model.safetensors"]["uri"] == f"{out}/model/model.safetensors"
    assert [step for step, _ in list_checkpoints(out)] == [2, 4]  # keep_checkpoints=2 prunes step 0 on S3
    reference = load_checkpoint(f"{out}/checkpoints/step-4.pt")

    # As if the process died after step 3: no manifest, no step-4 checkpoint. The re-run resumes from step 2.
    storage.delete(f"{out}/manifest.json")
    storage.delete(f"{out}/checkpoints/step-4.pt")
    second = train_vae(1, str(data), out, overrides=FAST)
    assert second["mlflow_run_id"] == first["mlflow_run_id"] and not second["skipped"]
    resumed = load_checkpoint(f"{out}/checkpoints/step-4.pt")
    for name, value in reference["generator"].items():
        assert torch.equal(resumed["generator"][name], value), name
    assert '"event": "resume"' in storage.read_text(f"{out}/events.jsonl")

    clips = write_dataset(tmp_path / "clips", [ClipSpec("a", 40, 48, 9, 8.0)])
    report = evaluate_vae(f"{out}/model", str(clips), f"{s3_bucket}/vae/eval", overrides=FAST)
    assert report["clips"] == 1
    assert storage.exists(f"{s3_bucket}/vae/eval/reconstruction.mp4")
    assert manifest.read_manifest(f"{s3_bucket}/vae/eval")["stage"] == "vae-eval"
