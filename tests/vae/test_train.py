"""`train_vae`: artifacts, skip when finished, phase-2 EMA handoff with lineage (image-trained kernels on the
current frame), instability guard.

The data loader is the stand-in of `tests/vae/standin.py` (deterministic synthetic clips with exact resume);
the model is the tiny preset at half width on 9×32×32 clips, so a run takes seconds on a CPU.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from components.core import manifest, storage, tracking
from components.core.training import checkpoint
from components.vae import load_vae
from components.vae.tail_init import inflate_kernel
from components.vae.train import train_vae
from tests.vae.standin import patch_loader, write_fake_manifest

FAST = ["model.hidden_size=8", "data.bucket=9x32x32", "train.discriminator.base_channels=4"]


@pytest.fixture(autouse=True)
def _standin_loader(tmp_path_factory, monkeypatch):
    # Module-scoped runs are read back by several tests: one tracking home for the session, not per test.
    monkeypatch.setenv("T2V_HOME", str(tmp_path_factory.getbasetemp() / "t2v-home"))
    patch_loader(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T2V_HOME", str(tmp_path_factory.getbasetemp() / "t2v-home"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("T2V_PARENT_RUN_ID", raising=False)
        patch_loader(patch)
        root = tmp_path_factory.mktemp("phase1")
        data = write_fake_manifest(root, "kinetics")
        out = root / "out"
        result = train_vae(1, str(data), str(out), overrides=FAST)
    return data, out, result


def test_phase1_writes_self_describing_artifact(phase1):
    data, out, result = phase1
    assert result["steps"] == 8 and not result["skipped"]
    written = manifest.read_manifest(out)
    assert written["stage"] == "vae-phase1" and written["inputs"]["data"]["uri"].endswith("manifest.json")
    for name, entry in written["files"].items():
        assert (out / name).is_file(), name
        assert storage.sha256_file(out / name) == entry["sha256"]
    assert {"model/config.json", "model/model.safetensors", "model_raw/model.safetensors",
            "metrics.json", f"{written['final_checkpoint']}/checkpoint.json"} <= set(written["files"])
    # The model folder is ours and loads through the model helper's loader; it holds the EMA weights.
    vae = load_vae(out / "model")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model"]["spatial_compression"] == 8
    # Trained from scratch, so the scale factor is calibrated on its training latents (1 / std), not SD's.
    calibrated = json.loads((out / "metrics.json").read_text())["scale_factor"]
    assert config["model"]["scale_factor"] == calibrated != 0.18215 and 0.05 < calibrated < 50
    final = checkpoint.read(str(out / written["final_checkpoint"]))
    assert final["step"] == 8
    for name, value in vae.state_dict().items():
        assert torch.equal(value, final["ema"]["shadow"].get(name, final["generator"][name])), name
    assert not torch.equal(final["ema"]["shadow"]["decoder.conv_out.conv.weight"],
                           final["generator"]["decoder.conv_out.conv.weight"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["bad_steps"] == 0
    assert {"gen", "rec", "lpips", "kl", "disc", "d_weight"} <= set(metrics["final_losses"])


def test_phase1_tracks_losses_samples_and_weights_in_mlflow(phase1):
    _, _, result = phase1
    run = tracking.get_run(result["mlflow_run_id"])
    assert run["name"] == "vae-phase1" and run["status"] == "FINISHED"
    assert {"train/gen", "train/rec", "train/lpips", "train/kl", "train/disc", "train/d_weight", "train/lr"} <= set(run["metrics"])
    assert [step for step, _ in tracking.metric_history(run["run_id"], "train/rec")] == [2, 4, 6, 8]
    samples = tracking.list_artifacts(run["run_id"], "samples")
    assert any(p.endswith(".png") for p in samples) and any(p.endswith(".mp4") for p in samples)
    assert "model/model.safetensors" in tracking.list_artifacts(run["run_id"], "model")


def test_rerun_with_same_inputs_does_nothing(phase1):
    data, out, result = phase1
    before = (out / "manifest.json").read_bytes()
    again = train_vae(1, str(data), str(out), overrides=FAST)
    assert again["skipped"] and again["mlflow_run_id"] == result["mlflow_run_id"]
    assert (out / "manifest.json").read_bytes() == before


def test_settings_that_do_not_change_the_weights_keep_a_phase_finished(phase1):
    data, out, result = phase1
    again = train_vae(1, str(data), str(out), overrides=[
        *FAST, "eval.max_clips=8", "eval.resolution=32", "train.log_every=1", "train.sample_every=1",
        "train.checkpoint_every=3", "train.keep_checkpoints=5", "data.num_workers=2", "launch.nproc_per_node=4",
        "train.phase2.steps=99", "train.phase2.lr=1e-3"])  # phase 2's own settings: not phase 1's weights
    assert again["skipped"] and again["mlflow_run_id"] == result["mlflow_run_id"]


def test_phase2_refuses_an_init_model_changed_after_phase1(phase1, tmp_path):
    data, phase1_out, _ = phase1
    edited = tmp_path / "edited"
    shutil.copytree(phase1_out, edited)
    weights = edited / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"edited/model/model.safetensors does not match the sha256 in its manifest"):
        train_vae(2, str(data), str(tmp_path / "p2"), init=str(edited), overrides=FAST)
    assert not (tmp_path / "p2").exists()


def test_phase2_starts_from_phase1_ema_with_fresh_ema_and_optimizers(phase1, tmp_path):
    _, phase1_out, phase1_result = phase1
    data2 = write_fake_manifest(tmp_path, "hq")
    out = tmp_path / "phase2"
    result = train_vae(2, str(data2), str(out), init=str(phase1_out), overrides=FAST)
    assert result["steps"] == 4
    start = checkpoint.read(str(out / "checkpoints" / "step-0"))
    phase1_ema = load_file(phase1_out / "model" / "model.safetensors")
    assert manifest.read_manifest(phase1_out)["config"]["data"]["bucket"] == "1x32x32"  # images
    for name, value in phase1_ema.items():
        if value.dim() == 5 and value.shape[2] > 1:  # a causal kernel trained on images: its sum, on frame t
            value = inflate_kernel(value.sum(2), value.shape)
        assert torch.equal(start["generator"][name], value), name  # live weights := phase-1 EMA
        if name in start["ema"]["shadow"]:
            assert torch.equal(start["ema"]["shadow"][name], value)  # fresh EMA from those weights
    for group in ("gen_optimizer", "disc_optimizer"):  # fresh: step 0, zero moments
        assert all(int(s["step"]) == 0 and not s["exp_avg"].any() for s in start[group]["state"].values())
    phase1_final = checkpoint.read(str(phase1_out / manifest.read_manifest(phase1_out)["final_checkpoint"]))
    for name, value in phase1_final["discriminator"].items():
        assert torch.equal(start["discriminator"][name], value), name
    # Lineage in the manifest, the MLflow tags and the registered model version.
    sha = storage.sha256_file(phase1_out / "manifest.json")
    written = manifest.read_manifest(out)
    assert written["lineage"]["lineage.phase1_run_id"] == phase1_result["mlflow_run_id"]
    assert written["lineage"]["lineage.phase1_manifest_sha256"] == sha
    assert written["inputs"]["init"]["sha256"] == sha
    tags = tracking.get_run(result["mlflow_run_id"])["tags"]
    assert tags["lineage.phase1_run_id"] == phase1_result["mlflow_run_id"]
    assert written["registered_model"]["name"] == "t2v-vae"


def test_phase2_after_a_video_phase1_starts_from_its_kernels_as_they_are(tmp_path):
    data = write_fake_manifest(tmp_path, "kinetics")
    video = [*FAST, "train.phase1.bucket=9x32x32", "train.phase1.steps=1", "train.phase2.steps=1"]
    train_vae(1, str(data), str(tmp_path / "phase1"), overrides=video)
    train_vae(2, str(data), str(tmp_path / "phase2"), init=str(tmp_path / "phase1"), overrides=video)
    start = checkpoint.read(str(tmp_path / "phase2" / "checkpoints" / "step-0"))["generator"]
    for name, value in load_file(tmp_path / "phase1" / "model" / "model.safetensors").items():
        assert torch.equal(start[name], value), name


def test_phase2_needs_a_phase1_output(phase1, tmp_path):
    data, phase1_out, _ = phase1
    with pytest.raises(ValueError, match="phase 2 starts from"):
        train_vae(2, str(data), str(tmp_path / "x"), overrides=FAST)
    with pytest.raises(ValueError, match="needs a finished phase-1 output"):
        train_vae(2, str(data), str(tmp_path / "x"), init=str(phase1_out / "model"), overrides=FAST)
    with pytest.raises(ValueError, match="must be 1 or 2"):
        train_vae(3, str(data), str(tmp_path / "x"), overrides=FAST)


def test_changed_config_in_a_used_folder_is_refused(phase1, tmp_path):
    data, _, _ = phase1
    out = tmp_path / "out"
    train_vae(1, str(data), str(out), overrides=[*FAST, "train.phase1.steps=1"])
    first = manifest.read_manifest(out)["mlflow_run_id"]
    (out / "manifest.json").unlink()  # as if interrupted
    with pytest.raises(ValueError, match="another configuration"):
        train_vae(1, str(data), str(out), overrides=[*FAST, "train.phase1.steps=2"])
    assert tracking.get_run(first)["status"] == "FINISHED"  # the earlier run is left alone


def test_nan_batch_is_skipped_without_rollback(phase1, tmp_path):
    data, _, _ = phase1
    out = tmp_path / "out"
    result = train_vae(1, str(data), str(out), overrides=[*FAST, "train.inject_nan_batches=[2]"])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["bad_step"] and events[0]["batch"] == 2
    assert "non-finite" in events[0]["reason"]
    assert result["steps"] == 8 and result["metrics"]["bad_steps"] == 1 and result["metrics"]["rollbacks"] == 0
    final = checkpoint.read(str(out / "checkpoints" / "step-8"))
    assert all(torch.isfinite(v).all() for v in final["generator"].values())
    assert tracking.get_run(result["mlflow_run_id"])["metrics"]["guard/bad_steps"] == 1


def test_consecutive_nan_batches_roll_back_and_skip_the_data(phase1, tmp_path):
    data, _, _ = phase1
    out = tmp_path / "out"
    result = train_vae(1, str(data), str(out), overrides=[*FAST, "train.inject_nan_batches=[5,6,7]"])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["bad_step"] * 3 + ["rollback"] + ["skip_batch"] * 3
    rollback = events[3]
    assert rollback["to_step"] == 4 and rollback["skip_batches"] == [5, 6, 7]
    assert result["steps"] == 8 and result["metrics"]["rollbacks"] == 1
    assert result["metrics"]["skip_batches"] == [5, 6, 7]
    final = checkpoint.read(str(out / "checkpoints" / "step-8"))
    assert final["skip_batches"] == [5, 6, 7] and all(torch.isfinite(v).all() for v in final["generator"].values())
    run = tracking.get_run(result["mlflow_run_id"])
    assert run["metrics"]["guard/rollbacks"] == 1 and run["tags"]["guard.rollbacks"] == "1"


def test_a_second_writer_on_the_output_folder_is_refused(phase1, tmp_path):
    from components.core import lease

    data, _, _ = phase1
    out = tmp_path / "busy"
    with lease.hold(out, owner="another t2v vae train"):
        with pytest.raises(lease.LeaseHeld, match="another t2v vae train"):
            train_vae(1, str(data), str(out), overrides=FAST)
    assert not (out / "manifest.json").exists() and not (out / "checkpoints").exists()

