"""`t2v data filter`: every input ends in exactly one of kept/rejected with the right reason, bad input
never crashes the stage, measurements are cached by content, outputs go to folders and S3 alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.core import manifest, storage, tracking
from components.data.annotations import load_annotations
from components.data.config import load_data_config
from components.data.filter import decide, run_filter

REPO = Path(__file__).resolve().parents[2]
ONE_WORKER = ["filter.workers=1"]


def good_clips(synth_shapes: Path, count: int) -> list[dict]:
    truth = json.loads((synth_shapes / "ground_truth.json").read_text())
    entries = json.loads((synth_shapes / "annotations.json").read_text())
    return [e for e in entries if truth[e["path"]]["good"]][:count]


@pytest.fixture()
def messy_dataset(tmp_path: Path, synth_shapes: Path) -> tuple[Path, dict[int, str]]:
    """Three good clips plus one of every kind of bad input; returns (annotations, expected reason per index)."""
    root = tmp_path / "dataset"
    (root / "videos").mkdir(parents=True)
    good = good_clips(synth_shapes, 3)
    for entry in good:
        shutil.copy(synth_shapes / entry["path"], root / entry["path"])
    video = (synth_shapes / good[0]["path"]).read_bytes()
    damaged = bytearray(video)
    damaged[40:400] = bytes(range(256)) + bytes(104)  # frame data overwritten, container intact
    (root / "videos/damaged.mp4").write_bytes(bytes(damaged))
    (root / "videos/truncated.mp4").write_bytes(video[: len(video) // 2])
    (root / "videos/empty.mp4").write_bytes(b"")
    (root / "videos/notes.mp4").write_text("this is a text file, not a video\n")
    shutil.copy(root / good[1]["path"], root / "videos/copy.mp4")
    (tmp_path / "outside.mp4").write_bytes(video)  # exists, but outside the dataset folder

    def like(path: str, **changes) -> dict:
        return {**good[0], "path": path, **changes}

    entries = [
        *good,                                                     # 0-2 kept
        like("videos/damaged.mp4"),                                # 3
        like("videos/truncated.mp4"),                              # 4
        like("videos/empty.mp4"),                                  # 5
        like("videos/notes.mp4"),                                  # 6
        like("videos/missing.mp4"),                                # 7
        like("../outside.mp4"),                                    # 8
        like(str(tmp_path / "outside.mp4")),                       # 9 absolute, elsewhere
        like(good[2]["path"], cap=""),                             # 10
        {k: v for k, v in good[2].items() if k != "cap"},          # 11
        like(good[2]["path"], cap=42),                             # 12
        dict(good[1]),                                             # 13 same path again
        like("videos/copy.mp4", cap="another caption"),            # 14 same content as 1
        "not an object",                                           # 15
    ]
    expected = {3: "corrupt", 4: "corrupt", 5: "empty_file", 6: "not_a_video", 7: "missing_file",
                8: "path_escapes", 9: "path_escapes", 10: "bad_caption", 11: "bad_caption", 12: "bad_caption",
                13: "duplicate", 14: "duplicate", 15: "bad_entry"}
    (root / "annotations.json").write_text(json.dumps(entries))
    return root / "annotations.json", expected


def test_bad_input_never_crashes_and_every_entry_lands_once(messy_dataset, tmp_path: Path) -> None:
    annotations, expected = messy_dataset
    out = tmp_path / "out"
    summary = run_filter(str(annotations), str(out), overrides=ONE_WORKER)
    kept = load_annotations(out / "kept.json")  # valid Open-Sora Plan schema (absolute paths)
    rejected = json.loads((out / "rejected.json").read_text())
    assert sorted([0, 1, 2] + [r["index"] for r in rejected]) == list(range(16))
    assert {r["index"]: r["reason"] for r in rejected} == expected
    assert all(r["message"] for r in rejected)
    assert summary["num_kept"] == 3 and summary["num_rejected"] == 13
    source = json.loads(annotations.read_text())
    for entry, original in zip(kept, source[:3], strict=True):
        assert entry["path"] == str(annotations.parent / original["path"]) and Path(entry["path"]).is_file()
        assert entry["source_path"] == original["path"] and entry["video_root"] == str(annotations.parent)
        assert entry["cap"] == original["cap"] and 1 <= entry["aesthetic"] <= 10 and entry["motion"] > 0
        # Probed facts match the file (the synthetic annotations are truthful).
        assert entry["num_frames"] == original["num_frames"] and entry["resolution"] == original["resolution"]
        assert entry["fps"] == pytest.approx(original["fps"])


def test_a_stalled_read_is_rejected_as_timeout_and_the_rest_go_on(synth_shapes: Path, tmp_path: Path) -> None:
    """A named pipe that nobody writes to blocks the open() system call for ever, as a read from a stalled
    network mount does: the stage stops the stuck worker after the limit and goes on with a new one."""
    good = good_clips(synth_shapes, 2)
    (tmp_path / "videos").mkdir()
    for entry in good:
        shutil.copy(synth_shapes / entry["path"], tmp_path / entry["path"])
    os.mkfifo(tmp_path / "videos/stalled.mp4")
    entries = [good[0], {**good[0], "path": "videos/stalled.mp4"}, good[1]]
    (tmp_path / "annotations.json").write_text(json.dumps(entries))
    started = time.monotonic()
    summary = run_filter(str(tmp_path / "annotations.json"), str(tmp_path / "out"),
                         overrides=[*ONE_WORKER, "filter.video_timeout_s=2"])
    assert time.monotonic() - started < 30
    assert summary["num_kept"] == 2 and summary["reasons"] == {"timeout": 1}
    kept = json.loads((tmp_path / "out/kept.json").read_text())
    assert [e["source_path"] for e in kept] == [good[0]["path"], good[1]["path"]]
    (stalled,) = json.loads((tmp_path / "out/rejected.json").read_text())
    assert stalled["index"] == 1 and stalled["reason"] == "timeout"
    assert str(tmp_path / "videos/stalled.mp4") in stalled["message"] and "video_timeout_s = 2 s" in stalled["message"]
    # A timeout is not a measurement: nothing is cached for it, so a later run tries the file again.
    assert len(list((tmp_path / "out/cache").glob("*.json"))) == 2


def test_measured_facts_replace_false_claims(synth_shapes: Path, tmp_path: Path) -> None:
    entry = good_clips(synth_shapes, 1)[0]
    shutil.copy(synth_shapes / entry["path"], tmp_path / "clip.mp4")
    lying = {**entry, "path": "clip.mp4", "num_frames": 999, "fps": 1,
             "resolution": {"height": 720, "width": 1280}, "duration": 999.0}
    (tmp_path / "annotations.json").write_text(json.dumps([lying]))
    run_filter(str(tmp_path / "annotations.json"), str(tmp_path / "out"), overrides=ONE_WORKER)
    kept = json.loads((tmp_path / "out/kept.json").read_text())[0]
    assert kept["num_frames"] == entry["num_frames"] and kept["resolution"] == entry["resolution"]
    assert kept["fps"] == pytest.approx(entry["fps"]) and kept["duration"] == pytest.approx(entry["duration"])


def test_outputs_report_histograms_mlflow_and_manifest(messy_dataset, tmp_path: Path) -> None:
    annotations, expected = messy_dataset
    out = tmp_path / "out"
    summary = run_filter(str(annotations), str(out), overrides=ONE_WORKER)
    report = json.loads((out / "report.json").read_text())
    assert report["num_entries"] == 16 and report["num_kept"] == 3
    assert sum(report["reasons"].values()) == 13 and report["reasons"]["corrupt"] == 2
    assert report["scores"]["aesthetic"]["kept"]["count"] == 3
    assert report["throughput"]["videos_read"] > 0 and report["throughput"]["videos_per_second"] > 0
    assert "| corrupt | 2 |" in (out / "report.md").read_text()
    for png in ("aesthetic.png", "motion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = manifest.read_manifest(out)
    assert found["stage"] == "filter" and found["video_root"] == str(annotations.parent)
    assert set(found["files"]) == {"kept.json", "rejected.json", "report.json", "report.md", "aesthetic.png", "motion.png"}
    assert found["inputs"]["annotations"]["sha256"] == storage.sha256_file(annotations)
    run = tracking.get_run(summary["mlflow_run_id"])
    assert run["name"] == "filter" and run["status"] == "FINISHED"
    assert run["metrics"]["num_kept"] == 3 and run["metrics"]["rejected.corrupt"] == 2
    assert {"kept.json", "rejected.json", "report.json", "report.md", "aesthetic.png", "motion.png"} <= set(
        tracking.list_artifacts(summary["mlflow_run_id"]))


def test_rerun_uses_the_cache_and_thresholds_redecide(synth_shapes: Path, tmp_path: Path) -> None:
    annotations = str(synth_shapes / "annotations.json")
    out = str(tmp_path / "out")
    first = run_filter(annotations, out, overrides=ONE_WORKER)
    report = json.loads(Path(out, "report.json").read_text())
    assert report["throughput"]["cache_hits"] == 0
    assert len(list(Path(out, "cache").glob("*.json"))) == 30
    # Same inputs and config: the finished output is recognised.
    assert run_filter(annotations, out, overrides=ONE_WORKER)["mlflow_run_id"] == first["mlflow_run_id"]
    # A stricter threshold: nothing is decoded again, decisions change.
    strict = run_filter(annotations, out, overrides=[*ONE_WORKER, "filter.aesthetic.min_score=8.0"])
    report = json.loads(Path(out, "report.json").read_text())
    assert report["throughput"]["cache_hits"] == 30 and report["throughput"]["frames_decoded"] == 0
    assert strict["num_kept"] < first["num_kept"] and strict["reasons"]["low_aesthetic"] > first["reasons"]["low_aesthetic"]


def test_nothing_kept_fails_clearly_with_report_and_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([{"path": "empty.mp4", "cap": "x"}, {"path": "gone.mp4", "cap": "y"}]))
    with pytest.raises(ValueError, match="kept none of the 2 videos"):
        run_filter(str(annotations), str(tmp_path / "out"), overrides=ONE_WORKER)
    assert (tmp_path / "out/report.md").is_file() and not (tmp_path / "out/manifest.json").exists()
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["reasons"] == {"empty_file": 1, "missing_file": 1}


def test_decide_thresholds() -> None:
    config = load_data_config("tiny").filter
    base = {"num_frames": 33, "resolution": {"height": 64, "width": 96}, "flicker": 0.0, "cut": 0.05,
            "motion": 0.05, "aesthetic": 7.0}
    assert decide(base, config) is None
    cases = {"too_few_frames": {"num_frames": 8}, "too_small": {"resolution": {"height": 24, "width": 96}},
             "extreme_aspect": {"resolution": {"height": 40, "width": 160}}, "flicker": {"flicker": 0.5},
             "scene_cut": {"cut": 0.9}, "static": {"motion": 0.001}, "too_much_motion": {"motion": 3.0},
             "low_aesthetic": {"aesthetic": 1.5}}
    for reason, change in cases.items():
        assert decide({**base, **change}, config)[0] == reason


def test_s3_input_and_output(s3_bucket: str, synth_shapes: Path) -> None:
    good = good_clips(synth_shapes, 2)
    for entry in good:
        storage.put_file(synth_shapes / entry["path"], f"{s3_bucket}/data/{entry['path']}")
    entries = [*good, {**good[0], "path": "videos/not-there.mp4"}]
    storage.write_json(f"{s3_bucket}/data/annotations.json", entries)
    out = f"{s3_bucket}/filtered"
    summary = run_filter(f"{s3_bucket}/data/annotations.json", out, overrides=["filter.workers=2"])
    assert summary["num_kept"] == 2 and summary["reasons"] == {"missing_file": 1}
    kept = load_annotations(f"{out}/kept.json")
    assert [e["path"] for e in kept] == [f"{s3_bucket}/data/{e['path']}" for e in good]
    assert all(storage.exists(e["path"]) for e in kept)
    assert manifest.read_manifest(out)["video_root"] == f"{s3_bucket}/data"
    assert len(storage.list_files(f"{out}/cache")) == 2


def test_cli_filter_and_failure_exit_code(synth_shapes: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "components.data", "filter", "--annotations",
               str(synth_shapes / "annotations.json"), "--set", "filter.workers=1"]
    result = subprocess.run([*command, "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_entries"] == 30
    missing = subprocess.run([sys.executable, "-m", "components.data", "filter", "--annotations",
                              str(tmp_path / "nope.json"), "--out", str(tmp_path / "p")],
                             cwd=REPO, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.json does not exist" in missing.stderr
