"""`evaluate_dit` end to end on an untrained, seeded tiny DiT (tests/dit/fixtures_models.py) and the latent
tests' cached latent folder with its val/ split: every output, MLflow, skip-if-finished, and adherence near
chance (an untrained model follows no prompt: a check of the reader and the control together)."""

import json
import subprocess
import sys

import cv2
import pytest

from components.core import tracking
from components.eval.adherence import CHANCE
from components.eval.dit import evaluate_dit

SMALL = ["sampling.frames=9", "sampling.height=32", "sampling.width=32", "sampling.steps=2", "sampling.batch=12",
         "val_loss.num_timesteps=4", "report.grid_prompts=4",
         "prompts.count=24"]


@pytest.fixture(scope="module")
def stage_folder(tmp_path_factory, cached_latents, tiny_vae_folder):
    from tests.dit.fixtures_models import make_trained_folder

    latents, _ = cached_latents
    return make_trained_folder(tmp_path_factory.mktemp("dit_eval"), vae=tiny_vae_folder,
                               text_encoder=latents / "text_encoder")


def test_evaluate_dit_writes_the_report_and_skips_when_finished(stage_folder, cached_latents, tmp_path):
    latents, _ = cached_latents
    out = tmp_path / "dit-eval"
    result = evaluate_dit(str(stage_folder), str(latents), str(out), overrides=SMALL)
    assert result["skipped"] is False
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"metrics.json", "samples.png", "samples.gif", "summary.md", "manifest.json"} <= names
    assert {f"videos/{i:02d}.mp4" for i in range(1, 25)} <= names
    capture = cv2.VideoCapture(str(out / "videos" / "01.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 9 and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 32

    report = json.loads((out / "metrics.json").read_text())
    protocol = report["protocol"]
    assert [p["seed"] for p in protocol["prompts"]] == list(range(24))
    assert protocol["sampling"]["scheduler"] == "euler_ancestral" and protocol["sampling"]["steps"] == 2
    assert protocol["models"]["dit"]["sha256"] and protocol["models"]["vae"]["uri"].endswith("vae")
    # Untrained: the readings follow no prompt, so accuracy and the shuffled control both sit near chance.
    for name, chance in CHANCE.items():
        assert abs(report["adherence"]["accuracy"][name] - chance) <= 0.25, name
        assert abs(report["adherence"]["shuffled"][name] - chance) <= 0.25, name
    val_loss = report["val_loss"]
    assert val_loss["timesteps"] == [125, 375, 625, 875] and val_loss["samples"] >= 1
    assert all(0 < v < 100 for v in val_loss["loss"])
    assert report["clip_score"] is None

    run = tracking.get_run(result["mlflow_run_id"])
    assert run["status"] == "FINISHED" and run["name"] == "dit-eval"
    assert run["metrics"]["eval/adherence/background"] == report["adherence"]["accuracy"]["background"]
    assert run["metrics"]["eval/val_loss/t0375"] == pytest.approx(val_loss["loss"][1])
    assert [step for step, _ in tracking.metric_history(run["run_id"], "eval/val_loss_by_timestep")] == [
        125, 375, 625, 875]
    artifacts = tracking.list_artifacts(run["run_id"], "eval")
    assert {"eval/samples.gif", "eval/samples.png", "eval/metrics.json", "eval/summary.md"} <= set(artifacts)
    assert "| background |" in (out / "summary.md").read_text() == result["markdown"]

    again = evaluate_dit(str(stage_folder), str(latents), str(out), overrides=SMALL)
    assert again["skipped"] is True and again["mlflow_run_id"] == result["mlflow_run_id"]


def test_same_seed_same_videos_and_a_new_setting_reruns(stage_folder, cached_latents, tmp_path):
    latents, _ = cached_latents
    small = [*SMALL, "prompts.count=4", "val_loss.enabled=false"]
    first = evaluate_dit(str(stage_folder), str(latents), str(tmp_path / "a"), overrides=small)
    second = evaluate_dit(str(stage_folder), str(latents), str(tmp_path / "b"), overrides=small)
    assert second["skipped"] is False
    for index in range(1, 5):
        assert (tmp_path / "a" / "videos" / f"{index:02d}.mp4").read_bytes() == (
            tmp_path / "b" / "videos" / f"{index:02d}.mp4").read_bytes()
    assert "eval/val_loss/mean" not in first
    rerun = evaluate_dit(str(stage_folder), str(latents), str(tmp_path / "a"), overrides=[*small, "sampling.steps=3"])
    assert rerun["skipped"] is False


def test_cli_rejects_a_bad_size_before_any_work(stage_folder, cached_latents, tmp_path):
    latents, _ = cached_latents
    command = [sys.executable, "-m", "components.cli", "dit", "eval", "--dit", str(stage_folder), "--data",
               str(latents), "--out", str(tmp_path / "out"), "--set", "sampling.frames=10"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.strip().startswith("error:") and "frames 10" in finished.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_real_data_prompts_get_a_clip_score(stage_folder, cached_latents, tmp_path):
    """prompts.source=validation: the held-out set's captions, no adherence, the CLIP score of a local model."""
    from tests.eval.tiny_clip import save_tiny_clip

    latents, _ = cached_latents
    clip = save_tiny_clip(tmp_path / "clip")
    result = evaluate_dit(str(stage_folder), str(latents), str(tmp_path / "out"), overrides=[
        *SMALL, "prompts.source=validation", "prompts.count=3", "val_loss.enabled=false", f"clip.model={clip}"])
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["adherence"] is None and report["protocol"]["heldout"] is None
    assert 2 <= len(report["protocol"]["prompts"]) <= 3
    assert len(report["clip_score"]["per_video"]) == len(report["protocol"]["prompts"])
    assert result["eval/clip_score"] == pytest.approx(report["clip_score"]["mean"])
    assert "## CLIP score" in result["markdown"]
