"""Checks before the first stage: presets, overrides, offline files, and that the stages fit together."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.data.buckets import Bucket, ClipShape, assign_bucket, make_buckets
from components.data.config import load_data_config
from components.vae.config import load_vae_config
from flows import preflight
from flows.stages import STAGES, chain, stage_dir

REPO = Path(__file__).resolve().parents[2]
LPIPS_FILES = ("vgg16-397923af.pth", "alexnet-owt-7be5be79.pth")  # v1.2: VGG for training, AlexNet for eval


@pytest.fixture()
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: no backbone weights unless a test puts them there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_tiny_needs_nothing(torch_home):
    assert preflight.problems(chain(), "tiny", []) == []


def test_v1_2_names_the_lpips_weights_it_needs_offline(torch_home):
    found = preflight.problems(chain(until="vae-eval"), "v1.2", [])
    assert len(found) == 2
    for key, name in (("eval", LPIPS_FILES[1]), ("train.loss", LPIPS_FILES[0])):
        (line,) = [line for line in found if line.startswith(f"vae preset 'v1.2': {key}.lpips_backbone ")]
        assert f"at {torch_home / name} (from https://download.pytorch.org/models/{name})" in line
        assert f"--set vae.{key}.lpips_random_backbone=true" in line
    # Stages that use no LPIPS need no weights; with the files in place nothing is missing.
    assert preflight.problems(chain(until="shard"), "v1.2", []) == []
    torch_home.mkdir(parents=True)
    for name in LPIPS_FILES:
        (torch_home / name).write_bytes(b"weights")
    assert preflight.problems(chain(until="vae-eval"), "v1.2", []) == []


def test_v1_2_dit_stages_name_the_text_encoder_and_clip_they_need_offline(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    found = preflight.problems(chain(), "v1.2", ["vae.eval.lpips_random_backbone=true",
                                                   "vae.train.loss.lpips_random_backbone=true"])
    assert [line.split(":")[0] for line in found] == ["dit preset 'v1.2'", "eval preset 'v1.2'"]
    assert "text.source google/mt5-xxl" in found[0] and "clip.model 'openai/clip-vit-large-patch14'" in found[1]


@pytest.mark.parametrize("override, complaint", [
    ("vae.train.lrr=1", "unknown key 'train.lrr'"),
    ("data.shard.frames=[3]", "frame counts must be distinct and 1 or 4k+1"),
    ("vae.data.bucket=33x256x256", "vae.data.bucket 33x256x256 (crop_larger) fits in no bucket the shard stage makes"),
    ("dit.model.depth=2", "unknown key 'model.depth'"),
    ("eval.x=1", "unknown key 'x'"),
    ("train.lr=1e-4", "must look like <component>.<key>=<value>"),
])
def test_every_override_is_checked_before_any_stage(override, complaint, torch_home):
    (line,) = [line for line in "\n".join(preflight.problems(chain(), "tiny", [override])).splitlines()
               if complaint in line]
    assert line


def test_a_cropped_vae_bucket_must_fit_in_a_bucket_the_shard_stage_makes(torch_home):
    """With vae.data.crop_larger (tiny) the training size need not be a bucket, only fit inside one;
    without it, it must be one."""
    assert preflight.problems(chain(), "tiny", ["vae.data.bucket=9x48x48"]) == []
    (line,) = preflight.problems(chain(), "tiny", ["vae.data.bucket=9x96x96"])
    assert line.startswith("vae.data.bucket 9x96x96 (crop_larger) fits in no bucket the shard stage makes")
    uncropped = ["vae.data.crop_larger=false", "vae.train.phase1.crops_per_clip=1", "vae.data.bucket=9x48x48"]
    image_phase, video_phase = preflight.problems(chain(), "tiny", uncropped)
    assert image_phase.startswith("vae.train.phase1.bucket 1x32x32 is not a bucket the shard stage makes")
    assert video_phase.startswith("vae.data.bucket 9x48x48 is not a bucket the shard stage makes")
    (line,) = preflight.problems(chain(), "tiny", ["vae.train.phase1.bucket=1x96x96"])
    assert line.startswith("vae.train.phase1.bucket 1x96x96 (crop_larger) fits in no bucket the shard stage makes")


def test_v1_2_stages_fit_together():
    """Every stage's inputs for v1.2 resolve without running anything: each input is an earlier stage's
    output, the VAE's bucket is one the shard stage makes and that the synthetic clips reach, and the
    eval's clips are long enough."""
    run_root = "/runs/v1.2"
    written: set[str] = set()
    for stage in STAGES:
        arguments = {**stage.extra, **stage.arguments(run_root)}
        for name, value in arguments.items():
            if isinstance(value, str) and value.startswith(run_root):
                assert value in written, f"stage {stage.name}: {name}={value} is written by no earlier stage"
        out = stage_dir(run_root, stage.name)
        written.add(out)
        for output in (*stage.outputs, "manifest.json"):
            parts = output.split("/")
            written |= {"/".join([out, *parts[:depth]]) for depth in range(1, len(parts) + 1)}

    data, vae = load_data_config("v1.2"), load_vae_config("v1.2")
    bucket = Bucket.from_name(vae.data.bucket)
    assert (bucket.frames, bucket.height, bucket.width) == (25, 256, 256)  # reference notes §1.10
    buckets = make_buckets(data.shard.frames, data.shard.resolutions)
    assert bucket in buckets
    # The smallest and shortest clips synth makes, at every aspect ratio and frame rate, land in it.
    for ratio in data.synth.aspect_ratios:
        long_side = data.synth.min_side
        short_side = int(round(long_side / max(ratio, 1 / ratio) / 8)) * 8
        height, width = (short_side, long_side) if ratio >= 1 else (long_side, short_side)
        for fps in data.synth.fps_choices:
            clip = ClipShape(height, width, data.synth.min_frames, fps)
            got, reason = assign_bucket(clip, buckets, data.shard.train_fps, data.shard.max_upscale,
                                        data.shard.max_aspect_error)
            assert got == bucket, (ratio, fps, reason)
            assert min(height, width) >= data.filter.min_side
    assert vae.eval.num_frames <= min(data.synth.min_frames, data.filter.min_frames)  # §1.11: 33 frames
    assert vae.eval.resolution == bucket.height == bucket.width


def test_pipeline_cli_user_errors_are_short_and_early(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2V_HOME": str(tmp_path / "home"),
           "TORCH_HOME": str(tmp_path / "torch")}
    for args, complaint in [(["--set", "vae.train.lrr=1"], "unknown key 'train.lrr'"),
                            (["--preset", "v9"], "unknown preset 'v9'"),
                            (["--preset", "v1.2", "--until", "vae-eval"], "lpips_random_backbone=true"),
                            (["--annotations", str(tmp_path / "none.json")], "none.json: no such file")]:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "flows", "run", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert complaint in proc.stderr and proc.stderr.startswith("error: ")
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2, proc.stderr
        assert proc.stdout == ""
        assert time.monotonic() - started < 60  # no Prefect server was started, no stage ran
    assert not (tmp_path / "home").exists()


def test_an_unknown_preset_is_one_line():
    assert preflight.problems(chain(), "v9", []) == ["unknown preset 'v9' (--preset): data, vae, dit, eval have tiny, v1.2"]


def test_a_stage_failing_on_the_users_input_ends_without_tracebacks(tmp_path, prefect_server):
    """Found only at run time (the filter keeps none of the videos): the stages' log lines, then one error
    line; exit status 2. The flow run's logs on the server keep the traceback."""
    annotations = tmp_path / "annotations.json"
    annotations.write_text('[{"path": "missing.mp4", "cap": "nothing"}]')
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2V_HOME": str(tmp_path / "home"), "PREFECT_API_URL": prefect_server}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "flows", "run", "--annotations", str(annotations), "--until", "filter"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: stage 'filter' failed: ValueError: filter kept none of the 1 videos in {annotations}; "
                      f"see {tmp_path}/home/runs/tiny/filter/report.md for the reasons (no manifest written)"]
    assert "filter: video 1/1 (100%)" in proc.stderr  # the stage's progress line


def test_console_keeps_a_bugs_traceback_and_drops_a_user_errors():
    import logging

    from flows.cli import _ShortUserErrors

    formatter = _ShortUserErrors("%(message)s")

    def formatted(exc: BaseException) -> str:
        try:
            raise exc
        except BaseException:
            return formatter.format(logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()))

    assert formatted(KeyError("bug")).startswith("failed\nTraceback (most recent call last):")
    assert formatted(ValueError("unknown key")) == "failed"
    try:
        raise RuntimeError("stage 'x' failed") from FileNotFoundError("no such file")
    except RuntimeError as chained:
        assert formatted(chained) == "failed"  # a stage's user error, wrapped by the pipeline
