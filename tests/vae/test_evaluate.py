"""`evaluate_vae`: the §1.11 protocol (resize, crop, consecutive frames, posterior mean), outputs, tracking."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core import manifest, tracking
from components.core.metrics import psnr
from components.vae import load_vae
from components.vae.config import load_vae_config
from components.vae.evaluate import evaluate_vae, prepare_clip
from components.vae.model import CausalVAE
from components.vae.official import save_vae
from tests.data.clips import ClipSpec, write_dataset

ROOT = Path(__file__).resolve().parents[2]
SPECS = [ClipSpec("wide", 48, 80, 12, 8.0), ClipSpec("tall", 72, 40, 10, 8.0), ClipSpec("short", 64, 64, 5, 8.0),
         ClipSpec("image", 64, 64)]
FAST = ["eval.resolution=32", "eval.num_frames=9"]


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae")
    save_vae(folder, CausalVAE(load_vae_config("tiny", ["model.hidden_size=8"]).model))
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("clips"), SPECS)  # annotations.json


def test_prepare_clip_resizes_short_side_crops_centre_and_keeps_consecutive_frames():
    frames = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1).expand(3, 12, 40, 80) / 12  # value = t/12
    prepared = prepare_clip(frames, 9, 20)
    assert prepared.shape == (3, 9, 20, 20)
    assert torch.allclose(prepared[0, :, 10, 10], torch.arange(9) / 12)  # frames 0..8, in order
    # Centre crop: a marker column at the horizontal centre of the source ends at the crop's centre.
    marked = torch.zeros(3, 9, 40, 80)
    marked[..., 38:42] = 1.0
    crop = prepare_clip(marked, 9, 20)
    assert crop[0, 0, 10, 9:11].min() > 0.8 and crop[0, 0, 10, :5].max() < 0.05
    assert prepare_clip(frames[:, :8], 9, 20) is None


def test_evaluate_writes_metrics_previews_and_manifest(vae_folder, clips, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_vae(str(vae_folder), str(clips), str(out), overrides=FAST)
    assert result["clips"] == 2 and not result["skipped"]  # "short" (5 frames) and the image are left out
    report = json.loads((out / "metrics.json").read_text())
    assert report["clips_too_short"] == 1
    protocol = report["protocol"]
    assert protocol["num_frames"] == 9 and protocol["resolution"] == 32 and protocol["latents"] == "posterior mean"
    assert protocol["lpips"] == {"backbone": "alex", "random_backbone": True, "comparable_to_published": False}
    # The number says what it is worth, next to it: in metrics.json, the result, the manifest and MLflow.
    assert report["notes"]["lpips"].startswith("random alex backbone (eval.lpips_random_backbone=true)")
    assert result["notes"] == report["notes"]
    assert set(report["metrics"]) == {"psnr", "ssim", "lpips"} and len(report["per_timestep"]["psnr"]) == 9
    assert report["speed"]["encode_seconds_per_clip"] > 0 and report["speed"]["decode_seconds_per_clip"] > 0
    assert report["speed"]["peak_memory_mb"] > 0
    written = manifest.read_manifest(out)
    assert written["stage"] == "vae-eval" and set(written["files"]) == {"metrics.json", "reconstruction.png",
                                                                       "reconstruction.mp4"}
    run = tracking.get_run(result["mlflow_run_id"])
    assert run["name"] == "vae-eval" and run["metrics"]["eval/psnr"] == pytest.approx(result["psnr"])
    assert run["tags"]["note.eval/lpips"] == report["notes"]["lpips"]
    assert {"eval/metrics.json", "eval/reconstruction.png", "eval/reconstruction.mp4"} <= set(
        tracking.list_artifacts(run["run_id"], "eval"))
    again = evaluate_vae(str(vae_folder), str(clips), str(out), overrides=FAST)
    assert again["skipped"] and again["psnr"] == result["psnr"]


def test_evaluate_uses_the_posterior_mean(vae_folder, clips, tmp_path):
    result = evaluate_vae(str(vae_folder), str(clips), str(tmp_path / "a"), overrides=[*FAST, "eval.max_clips=1"])
    from components.core.media import read_video

    video = prepare_clip(read_video(str(clips.parent / "videos" / "wide.mp4")), 9, 32)[None]
    model = load_vae(vae_folder)
    with torch.no_grad():
        recon = model.decode(model.encode(video).mode()).clamp(-1, 1)
    expected = psnr((recon.transpose(1, 2) + 1) / 2, (video.transpose(1, 2) + 1) / 2).mean().item()
    assert result["psnr"] == pytest.approx(expected, abs=1e-4)


def test_folder_of_videos_without_annotations(vae_folder, clips, tmp_path):
    result = evaluate_vae(str(vae_folder), str(clips.parent / "videos"), str(tmp_path / "e"), overrides=FAST)
    assert result["clips"] == 2


def test_eval_cli(vae_folder, clips, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "components.vae", "eval", "--vae", str(vae_folder), "--data", str(clips),
               "--out", str(out), *[arg for o in FAST for arg in ("--set", o)]]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["clips"] == 2 and (out / "manifest.json").is_file()


def test_eval_cli_reports_config_errors_by_key(vae_folder, clips, tmp_path, capsys):
    from components.vae.cli import main

    code = main(["eval", "--vae", str(vae_folder), "--data", str(clips), "--out", str(tmp_path / "x"),
                 "--set", "eval.num_frames=8"])
    assert code == 2 and "eval.num_frames" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
