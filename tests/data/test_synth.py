"""`t2v data synth`: clips decode and match their annotations, are deterministic per seed, ground truth
covers every clip, captions name what is drawn, and output goes to S3 as well as to a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.core import manifest, storage, tracking
from components.data.annotations import load_annotations
from components.data.synth import COLOURS, DEFECTS, synthesize

REPO = Path(__file__).resolve().parents[2]


def decode(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_clips_decode_and_match_annotations(synth_shapes: Path) -> None:
    entries = load_annotations(synth_shapes / "annotations.json")
    assert len(entries) == 30
    sizes, rates, lengths, orientations = set(), set(), set(), set()
    for entry in entries:
        capture = cv2.VideoCapture(str(synth_shapes / entry["path"]))
        assert capture.isOpened(), entry["path"]
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(entry["fps"])
        capture.release()
        frames = decode(synth_shapes / entry["path"])
        assert len(frames) == entry["num_frames"]
        assert frames[0].shape == (entry["resolution"]["height"], entry["resolution"]["width"], 3)
        assert entry["duration"] == pytest.approx(entry["num_frames"] / entry["fps"], abs=1e-5)
        assert entry["resolution"]["height"] % 8 == 0 and entry["resolution"]["width"] % 8 == 0
        h, w = entry["resolution"]["height"], entry["resolution"]["width"]
        assert 8 <= min(h, w) and max(h, w) <= 160
        sizes.add((h, w)), rates.add(entry["fps"]), lengths.add(entry["num_frames"])
        orientations.add("square" if h == w else "portrait" if h > w else "landscape")
    # Mixed sizes, rates, lengths and orientations: buckets and frame sampling have work to do.
    assert len(sizes) >= 5 and rates == {12, 24, 30} and len(lengths) >= 10
    assert orientations == {"square", "portrait", "landscape"}


def test_ground_truth_covers_every_clip_and_stays_out_of_annotations(synth_shapes: Path) -> None:
    entries = json.loads((synth_shapes / "annotations.json").read_text())
    truth = json.loads((synth_shapes / "ground_truth.json").read_text())
    assert set(truth) == {e["path"] for e in entries}
    assert all(set(e) == {"path", "cap", "resolution", "fps", "duration", "num_frames"} for e in entries)
    bad = [v["defect"] for v in truth.values() if not v["good"]]
    assert len(bad) == round(30 * 0.2) and set(bad) == set(DEFECTS)
    assert all(v["defect"] is None for v in truth.values() if v["good"])


def test_caption_names_the_colour_and_motion_actually_drawn(synth_shapes: Path) -> None:
    entries = json.loads((synth_shapes / "annotations.json").read_text())
    truth = json.loads((synth_shapes / "ground_truth.json").read_text())
    checked = 0
    for entry in entries:
        if not truth[entry["path"]]["good"]:
            continue
        words = entry["cap"].split()
        colour, direction = words[1], words[5]
        frames = decode(synth_shapes / entry["path"])
        centres = []
        for frame in frames[:8]:
            distance = np.abs(frame.astype(int) - np.array(COLOURS[colour])).sum(axis=2)
            ys, xs = np.nonzero(distance < 60)
            assert len(xs) > 10, f"no {colour} pixels in {entry['path']}"
            centres.append((xs.mean(), ys.mean()))
        steps = np.diff(np.array(centres), axis=0)  # (7, 2) centroid moves per frame
        steps = steps[np.abs(steps).max(axis=1) < 0.2 * min(frames[0].shape[:2])]  # not an edge crossing
        dx, dy = steps.sum(axis=0)
        expected = {"left": dx < -0.5, "right": dx > 0.5, "up": dy < -0.5, "down": dy > 0.5}[direction]
        assert expected, (entry["cap"], dx, dy)
        checked += 1
    assert checked >= 20


def test_same_seed_is_deterministic_other_seed_differs(tmp_path: Path) -> None:
    synthesize(str(tmp_path / "a"), num=6, seed=3)
    synthesize(str(tmp_path / "b"), num=6, seed=3)
    synthesize(str(tmp_path / "c"), num=6, seed=4)
    for name in ("annotations.json", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/annotations.json").read_bytes() != (tmp_path / "c/annotations.json").read_bytes()
    for entry in json.loads((tmp_path / "a/annotations.json").read_text()):  # H.264: the same bytes
        assert (tmp_path / "a" / entry["path"]).read_bytes() == (tmp_path / "b" / entry["path"]).read_bytes()


def test_codec_h264_by_default_mp4v_on_request(tmp_path: Path) -> None:
    import av

    synthesize(str(tmp_path / "h"), num=2, seed=0)
    synthesize(str(tmp_path / "m"), num=2, seed=0, overrides=["synth.codec=mp4v"])
    for folder, codec, pix_fmt in (("h", "h264", "yuv420p"), ("m", "mpeg4", "yuv420p")):
        entries = json.loads((tmp_path / folder / "annotations.json").read_text())
        for entry in entries:
            with av.open(str(tmp_path / folder / entry["path"])) as container:
                stream = container.streams.video[0]
                assert (stream.codec_context.name, stream.codec_context.pix_fmt) == (codec, pix_fmt)
                assert sum(1 for _ in container.decode(stream)) == entry["num_frames"]
        assert entries == json.loads((tmp_path / "h/annotations.json").read_text())  # only the codec differs


def test_photos_kind_pans_and_zooms_over_real_photographs(tmp_path: Path) -> None:
    summary = synthesize(str(tmp_path), num=6, seed=0, kind="photos", overrides=["synth.bad_fraction=0"])
    entries = load_annotations(summary["annotations"])
    assert all(" a photograph of " in e["cap"] and (" pan " in e["cap"] or " zoom " in e["cap"]) for e in entries)
    for entry in entries:
        frames = decode(tmp_path / entry["path"])
        assert len(frames) == entry["num_frames"]
        # Natural content: textured, and the camera really moves between first and last frame.
        assert cv2.Laplacian(cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var() > 50
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 3


def test_manifest_lists_every_file_and_mlflow_has_the_counts(tmp_path: Path) -> None:
    summary = synthesize(str(tmp_path), num=4, seed=1)
    found = manifest.read_manifest(tmp_path)
    assert found["stage"] == "synth" and found["mlflow_run_id"] == summary["mlflow_run_id"]
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(found["files"]) == files
    for rel, item in found["files"].items():
        assert storage.sha256_file(tmp_path / rel) == item["sha256"]
    run = tracking.get_run(summary["mlflow_run_id"])
    assert run["name"] == "synth" and run["status"] == "FINISHED"
    assert run["metrics"]["num_clips"] == 4 and run["params"]["seed"] == "1"
    # Same request again: the finished output is recognised, nothing is rewritten.
    again = synthesize(str(tmp_path), num=4, seed=1)
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]


def test_s3_output_through_a_local_endpoint(s3_bucket: str, tmp_path: Path) -> None:
    out = f"{s3_bucket}/synth"
    summary = synthesize(out, num=3, seed=2)
    assert summary["annotations"] == f"{out}/annotations.json"
    entries = load_annotations(summary["annotations"])
    found = manifest.read_manifest(out)
    assert set(found["files"]) == {"annotations.json", "ground_truth.json"} | {e["path"] for e in entries}
    local = storage.get_file(f"{out}/{entries[0]['path']}", tmp_path / "clip.mp4",
                             found["files"][entries[0]["path"]]["sha256"])
    assert len(decode(local)) == entries[0]["num_frames"]


def test_cli_runs_in_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "components.data", "synth", "--out", str(tmp_path / "o"),
                             "--num", "2", "--seed", "5"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_clips"] == 2
    bad = subprocess.run([sys.executable, "-m", "components.data", "synth", "--out", str(tmp_path / "p"),
                          "--set", "synth.min_frames=3"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "short_frames" in bad.stderr


def test_shape_size_sets_the_drawn_diameter() -> None:
    from components.data.config import load_data_config
    from components.data.synth import plan_clip

    for low, high in ((0.22, 0.36), (0.45, 0.5)):
        config = load_data_config("tiny", [f"synth.shape_size=[{low}, {high}]"]).synth
        for index in range(20):
            plan = plan_clip(index, 0, "shapes", config, None)
            assert low <= plan.scene["size"] / min(plan.height, plan.width) <= high
