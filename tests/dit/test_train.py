"""`train_dit`: the stage artifact, MLflow metrics and registered alias, skip when finished, and the handoff
from stage k - 1's EMA weights (strict keys, lineage), in one process.

Stages 1 and 2 of the tiny preset run once for the module (a few steps each) against a real MLflow server,
on the latent folder that `t2v dit encode` makes of the data tests' clips (`cached_latents`): stage 1 trains
on its 1x32x32 images (3), stage 2 on its 1x64x64 ones (3).
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.core import manifest, storage, tracking
from components.core.training import checkpoint
from components.dit import load_dit
from components.dit.train import train_dit
from components.dit.train_export import REGISTERED_MODEL
from tests.dit.latent_fixtures import SCALE_FACTOR

FAST = ["train.stages.0.steps=6", "train.stages.1.steps=4", "train.checkpoint_every=3", "train.log_every=2"]
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def stages(tmp_path_factory, mlflow_server, cached_latents):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.delenv("T2V_PARENT_RUN_ID", raising=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("dit-train")
        data = cached_latents[0]
        first = train_dit(1, str(data), str(root / "stage1"), overrides=FAST)
        second = train_dit(2, str(data), str(root / "stage2"), init=str(root / "stage1"),
                           overrides=[*FAST, "train.keep_checkpoints=3"])  # step 0 kept for the handoff test
        torch.set_num_threads(threads)
    return data, root, first, second


@pytest.fixture(autouse=True)
def _tracking(monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("T2V_PARENT_RUN_ID", raising=False)


def test_a_stage_writes_a_self_describing_folder(stages):
    data, root, first, _ = stages
    out = root / "stage1"
    assert first["steps"] == 6 and not first["skipped"] and first["model"] == str(out / "model_ema")
    written = manifest.read_manifest(out)
    assert written["stage"] == "dit-stage1" and written["inputs"]["data"]["uri"] == str(data / "manifest.json")
    for name, entry in written["files"].items():
        assert storage.sha256_file(out / name) == entry["sha256"], name
    assert {f"model/{WEIGHTS}", "model/config.json", f"model_ema/{WEIGHTS}", "model_ema/config.json",
            "conditioning.json", "metrics.json"} <= set(written["files"])
    # conditioning.json: what sampling needs, copied from the latent manifest (the encoder's folder absolute).
    latent_manifest = json.loads((data / "manifest.json").read_text())
    conditioning = json.loads((out / "conditioning.json").read_text())
    assert conditioning == {"vae": latent_manifest["vae"], "scale_factor": SCALE_FACTOR,
                            "text_encoder": {**latent_manifest["text_encoder"], "uri": str(data / "text_encoder")},
                            "latents": str(data / "manifest.json")}
    assert (data / "text_encoder" / "config.json").is_file()
    # model_ema/ holds the EMA shadows of the final checkpoint, model/ the live weights; they differ.
    final = checkpoint.read(str(out / written["final_checkpoint"]))
    ema, live = load_file(out / "model_ema" / WEIGHTS), load_file(out / "model" / WEIGHTS)
    for name, value in ema.items():
        assert torch.equal(value, final["ema"]["shadow"][name]) and torch.equal(live[name], final["model"][name]), name
    assert not torch.equal(ema["proj_out.weight"], live["proj_out.weight"])
    assert load_dit(out).config.interpolation_scales == (1.0, 1.0, 1.0)
    # Checkpoints pruned to the last K (keep 2 of 0, 3, 6); the manifest came last.
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [3, 6]
    # 32 tokens / 4 per image would be 8 images a step; the bucket holds 3, so the batch shrinks to them.
    assert written["metrics"]["bucket_samples"] == {"1x32x32": 6 * 3}


def test_a_stage_logs_losses_rates_and_registers_its_ema_weights(stages):
    _, root, first, second = stages
    run = tracking.get_run(first["mlflow_run_id"])
    assert run["name"] == "dit-stage1" and run["status"] == "FINISHED"
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/step_time_s",
                "data/samples_1x32x32"}
    assert expected <= set(run["metrics"]) and any(m.startswith("train/loss_t_q") for m in run["metrics"])
    assert [step for step, _ in tracking.metric_history(run["run_id"], "train/loss")] == [2, 4, 6]
    assert run["metrics"]["train/lr"] == pytest.approx(5e-4) and run["metrics"]["train/tokens_per_s"] > 0
    assert run["metrics"]["data/samples_1x32x32"] == 18
    for number, result in ((1, first), (2, second)):
        version = tracking.registered_version(f"models:/{REGISTERED_MODEL}@stage{number}")
        assert version["run_id"] == result["mlflow_run_id"] and version["source"].endswith("/model_ema")
        assert manifest.read_manifest(result["out"])["registered_model"]["version"] == version["version"]
    assert "model_ema/config.json" in tracking.list_artifacts(first["mlflow_run_id"], "model_ema")


def test_rerun_with_same_inputs_does_nothing_and_other_settings_are_refused(stages):
    data, root, first, _ = stages
    before = (root / "stage1" / "manifest.json").read_bytes()
    again = train_dit(1, str(data), str(root / "stage1"),
                      overrides=[*FAST, "train.log_every=1", "train.keep_checkpoints=5", "model.gradient_checkpointing=true"])
    assert again["skipped"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    # A stage's own latent folder (train.stages[i].data) replaces --data: the same input, so still finished.
    assert train_dit(1, str(root / "nowhere"), str(root / "stage1"),
                     overrides=[*FAST, f"train.stages.0.data={data}"])["skipped"]
    assert (root / "stage1" / "manifest.json").read_bytes() == before
    # Same folder, unfinished, other weights-changing settings: an error, not a silent mix.
    unfinished = root / "unfinished"
    shutil.copytree(root / "stage1", unfinished)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(ValueError, match="holds checkpoints of another configuration or stage"):
        train_dit(1, str(data), str(unfinished), overrides=[*FAST, "train.optimizer.lr=1e-3"])


def test_stage_two_starts_from_stage_one_ema_with_fresh_optimizer_and_lineage(stages):
    _, root, first, second = stages
    out = root / "stage2"
    start = checkpoint.read(str(out / "checkpoints" / "step-0"))
    for name, value in load_file(root / "stage1" / "model_ema" / WEIGHTS).items():
        assert torch.equal(start["model"][name], value), name  # live weights := stage-1 EMA
        assert torch.equal(start["ema"]["shadow"][name], value), name  # a fresh EMA of them
    assert all(int(state["step"]) == 0 and not state["exp_avg"].any() for state in start["optimizer"]["state"].values())
    written = manifest.read_manifest(out)
    assert written["inputs"]["init"] == {"uri": str(root / "stage1" / "manifest.json"),
                                         "sha256": storage.sha256_file(root / "stage1" / "manifest.json")}
    assert written["lineage"]["lineage.init_run_id"] == first["mlflow_run_id"]
    run = tracking.get_run(second["mlflow_run_id"])
    assert run["tags"]["lineage.init_run_id"] == first["mlflow_run_id"]
    assert run["tags"]["lineage.init_manifest_sha256"] == written["inputs"]["init"]["sha256"]
    assert written["metrics"]["bucket_samples"] == {"1x64x64": 4 * 3}


def test_handoff_fails_naming_a_missing_or_unexpected_key(stages, tmp_path):
    data, root, _, _ = stages
    for change, expected in ((lambda w: w.pop("proj_out.bias"), r"missing 1 keys \['proj_out.bias'\]"),
                             (lambda w: w.update(extra=torch.zeros(1)), r"unexpected 1 keys \['extra'\]")):
        init = tmp_path / f"init-{len(expected)}"
        shutil.copytree(root / "stage1", init)
        weights = load_file(init / "model_ema" / WEIGHTS)
        change(weights)
        save_file(weights, init / "model_ema" / WEIGHTS)
        written = json.loads((init / "manifest.json").read_text())
        written["files"][f"model_ema/{WEIGHTS}"]["sha256"] = storage.sha256_file(init / "model_ema" / WEIGHTS)
        (init / "manifest.json").write_text(json.dumps(written))
        with pytest.raises(ValueError, match=expected):
            train_dit(2, str(data), str(tmp_path / "stage2"), init=str(init), overrides=FAST)
    # An init of another architecture than the configured one (4 blocks into 3): the extra block named.
    with pytest.raises(ValueError, match=r"unexpected \['transformer_blocks.3.attn1.to_k.bias'"):
        train_dit(2, str(data), str(tmp_path / "stage2"), init=str(root / "stage1"), overrides=[*FAST, "model.num_layers=3"])
    assert not (tmp_path / "stage2").exists()


def test_handoff_refuses_a_changed_or_wrong_init(stages, tmp_path):
    data, root, _, _ = stages
    with pytest.raises(ValueError, match="stage 2 starts from stage 1's EMA weights: pass --init"):
        train_dit(2, str(data), str(tmp_path / "a"), overrides=FAST)
    with pytest.raises(ValueError, match="stage 3 starts from dit-stage2's finished output.*found 'dit-stage1'"):
        train_dit(3, str(data), str(tmp_path / "b"), init=str(root / "stage1"), overrides=FAST)
    edited = tmp_path / "edited"
    shutil.copytree(root / "stage1", edited)
    weights = edited / "model_ema" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"edited/model_ema/diffusion_pytorch_model.safetensors does not match the sha256"):
        train_dit(2, str(data), str(tmp_path / "c"), init=str(edited), overrides=FAST)
    with pytest.raises(ValueError, match=r"stage 1\) selects buckets \['1x8x8'\] that are not in"):
        train_dit(1, str(data), str(tmp_path / "d"), overrides=[*FAST, "train.stages.0.buckets=[1x8x8]"])
    assert not any((tmp_path / name).exists() for name in "abcd")
