"""`t2v dit sample`: mp4s OpenCV reads back at the asked size, samples.json naming everything, the same
files for the same seed, and one-line errors for what a user gets wrong."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from components.core import storage, tracking
from components.dit.cli import build_parser, main
from components.dit.sample_sources import FOLDER_TAG, folder_sha256
from tests.dit.fixtures_models import SCALE_FACTOR, make_trained_folder

PROMPTS = ["A red circle moving left on a <b>blue</b> background", "a green square moving up"]
SIZE = ["--frames", "9", "--height", "32", "--width", "48"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return make_trained_folder(tmp_path_factory.mktemp("trained"))


def _sample(trained: Path, out: Path, *extra: str) -> int:
    argv = ["sample", "--dit", str(trained), "--out", str(out), *SIZE, "--steps", "3", "--guidance", "4.5",
            "--fps", "8", "--device", "cpu", *extra]
    for prompt in PROMPTS:
        argv += ["--prompt", prompt]
    return main(argv)


def _read_mp4(path: Path) -> tuple[int, int, int, float]:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    shape = (frames, int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
             capture.get(cv2.CAP_PROP_FPS))
    capture.release()
    return shape


def test_writes_readable_mp4s_and_a_complete_record(trained, tmp_path, capsys):
    out = tmp_path / "samples"
    assert _sample(trained, out, "--seed", "5", "--reference-negative-prompt") == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "samples.json").read_text())
    assert printed == record
    assert [s["file"] for s in record["samples"]] == ["000-a-red-circle-moving-left-on-a-blue.mp4",
                                                      "001-a-green-square-moving-up.mp4"]
    for entry in record["samples"]:
        assert _read_mp4(out / entry["file"]) == (9, 32, 48, 8.0)
        assert entry["sha256"] == storage.sha256_file(out / entry["file"])
    assert [s["seed"] for s in record["samples"]] == [5, 6]
    assert record["samples"][0]["prompt"] == PROMPTS[0]
    assert record["samples"][0]["encoded_prompt"] == "a red circle moving left on a blue background"  # cleaned
    assert record["negative_prompt"].startswith("nsfw, lowres, bad anatomy")
    assert {k: record[k] for k in ("scheduler", "steps", "guidance", "frames", "height", "width")} == {
        "scheduler": "euler_ancestral", "steps": 3, "guidance": 4.5, "frames": 9, "height": 32, "width": 48}
    models = record["models"]
    assert models["dit"]["uri"] == str(trained) and models["dit"]["model_folder"] == str(trained / "model_ema")
    assert models["dit"]["sha256"] == folder_sha256(str(trained / "model_ema"))
    assert models["vae"] == {"uri": str(trained.parent / "vae"), "sha256": folder_sha256(str(trained.parent / "vae"))}
    assert models["text_encoder"]["sha256"] == folder_sha256(str(trained.parent / "text-encoder"))
    assert models["scale_factor"] == SCALE_FACTOR and models["diffusion"]["num_train_timesteps"] == 1000


def test_same_seed_same_files(trained, tmp_path, capsys):
    hashes = []
    for name in ("first", "second", "other-seed"):
        assert _sample(trained, tmp_path / name, "--seed", "1" if name == "other-seed" else "0") == 0
        hashes.append([s["sha256"] for s in json.loads((tmp_path / name / "samples.json").read_text())["samples"]])
    assert hashes[0] == hashes[1] and hashes[0][0] != hashes[2][0]


def test_reads_the_dit_from_and_writes_to_s3(trained, s3_bucket, tmp_path, capsys):
    stage = f"{s3_bucket}/dit-stage1"
    for path in sorted(trained.rglob("*")):
        if path.is_file():
            storage.put_file(path, storage.join(stage, path.relative_to(trained).as_posix()))
    assert _sample(Path(trained), tmp_path / "local", "--scheduler", "ddim") == 0
    out = f"{s3_bucket}/samples"
    assert main(["sample", "--dit", stage, "--out", out, *SIZE, "--steps", "3", "--guidance", "4.5", "--fps", "8",
                 "--device", "cpu", "--scheduler", "ddim", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    record = storage.read_json(f"{out}/samples.json")
    local = json.loads((tmp_path / "local" / "samples.json").read_text())
    assert record["scheduler"] == "ddim" and record["models"]["dit"]["uri"] == stage
    assert record["models"]["dit"]["sha256"] == local["models"]["dit"]["sha256"]
    for entry, local_entry in zip(record["samples"], local["samples"], strict=True):
        assert storage.sha256_bytes(storage.read_bytes(f"{out}/{entry['file']}")) == entry["sha256"]
        assert entry["sha256"] == local_entry["sha256"]  # the same video from either store


def test_a_bad_size_is_one_line_before_loading(trained, tmp_path, capsys):
    assert _sample(trained, tmp_path / "out", "--height", "40") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: height 40 must be a positive multiple of 16 (VAE compression 8 x DiT patch 2)"
    assert not (tmp_path / "out").exists()


def test_python_m_samples_and_exits(trained, tmp_path):
    """The reference's SP sampler never returns (`while True:`, notes §4); ours exits 0 when the clips are written."""
    completed = subprocess.run([sys.executable, "-m", "components.dit", "sample", "--dit", str(trained), "--prompt",
                                PROMPTS[1], "--out", str(tmp_path / "out"), *SIZE, "--steps", "2", "--device", "cpu"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert json.loads(completed.stdout) == record and len(record["samples"]) == 1


def test_official_folder_without_vae_is_one_line_via_python_m(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "components.dit", "sample", "--dit",
                                "tests/dit/fixtures/reference", "--prompt", "x", "--out", str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "error: tests/dit/fixtures/reference: no conditioning.json beside the model (an official folder?): give "
        "the VAE and text encoder it was trained with, --vae and --text-encoder")


def test_help_example_runs(tracking_server, trained, tmp_path, capsys):
    """The --help example, verbatim but for --out, against a model registered as the trainer does."""
    run = tracking.start_run("dit-stage5")
    version = tracking.register_model("t2v-dit", run, "model_ema", tags={FOLDER_TAG: str(trained)})
    tracking.set_model_alias("t2v-dit", "stage5", version)
    run.finish()
    epilog = build_parser()._subparsers._group_actions[0].choices["sample"].epilog
    argv = shlex.split(epilog.removeprefix("example: "))[2:]  # drop "t2v dit"
    argv[argv.index("--out") + 1] = str(tmp_path / "samples")
    assert main([*argv, "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert record["models"]["dit"]["registered_model"]["version"] == version
    assert _read_mp4(tmp_path / "samples" / record["samples"][0]["file"]) == (17, 64, 64, 24.0)
