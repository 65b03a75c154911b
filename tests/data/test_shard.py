"""Sharding: bucket choice, sample contents, re-encode PSNR, manifest last, idempotence, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from components.core import tracking
from components.data.buckets import (
    Bucket,
    ClipShape,
    assign_bucket,
    centre_window,
    make_buckets,
    resample_indices,
)
from components.data.shard import shard, source_uri
from components.data.shard_manifest import read_shard_manifest
from components.data.verify import verify

TEST_PRESET = str(Path(__file__).with_name("shard_preset.yaml"))  # the shard tests' own buckets

REPO = Path(__file__).resolve().parents[2]
TINY_BUCKETS = make_buckets([1, 9, 17], [(64, 64), (48, 80), (80, 48)])


def _samples(out: Path) -> dict[str, dict]:
    """path -> sample json, over every shard."""
    found = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    found[meta["source"]["path"]] = meta | {"shard": tar_path.name}
    return found


# --------------------------------------------------------------------------- bucket rules


def test_resample_and_centre_window_are_deterministic():
    assert resample_indices(30, 30.0, 10.0).tolist() == list(range(0, 30, 3))
    assert resample_indices(10, 24.0, 24.0).tolist() == list(range(10))
    indices = resample_indices(48, 24.0, 8.0)  # 16 frames at 8 fps
    assert centre_window(indices, 9).tolist() == indices[3:12].tolist()  # (16 - 9) // 2 = 3, the same every time
    assert centre_window(indices, 16).tolist() == indices.tolist()  # the last start is reachable (reference §9.12)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (ClipShape(72, 72, 60, 24.0), "17x64x64"),  # 20 frames at 8 fps: the longest bucket that fits
        (ClipShape(54, 96, 48, 24.0), "9x48x80"),  # 16 frames: 17 does not fit, so 9
        (ClipShape(96, 56, 36, 12.0), "17x80x48"),  # portrait
        (ClipShape(50, 82, 1, None), "1x48x80"),  # image
    ],
)
def test_assign_bucket_best_fit(shape, expected):
    bucket, reason = assign_bucket(shape, TINY_BUCKETS, 8.0, 1.0, 1.25)
    assert reason is None and bucket.name == expected


def test_assign_bucket_reasons_and_upscale_limit():
    assert "too short" in assign_bucket(ClipShape(64, 64, 4, 24.0), TINY_BUCKETS, 8.0, 1.0, 1.25)[1]
    assert "too small" in assign_bucket(ClipShape(32, 32, 40, 24.0), TINY_BUCKETS, 8.0, 1.0, 1.25)[1]
    assert "aspect" in assign_bucket(ClipShape(40, 160, 40, 24.0), TINY_BUCKETS, 8.0, 1.0, 1.25)[1]
    # Allowing 2x upscaling lets the 32x32 clip into the 64x64 bucket.
    assert assign_bucket(ClipShape(32, 32, 40, 24.0), TINY_BUCKETS, 8.0, 2.0, 1.25)[0] == Bucket(9, 64, 64)


# --------------------------------------------------------------------------- the stage


def test_shard_buckets_samples_and_report(mixed_shards, mixed_clips, tracking_home, monkeypatch):
    out, result = mixed_shards
    manifest = read_shard_manifest(out)  # validates against schemas/manifest.schema.json
    assert result["samples"] == manifest["num_samples"] == 11 and manifest["num_unfit"] == 3
    assert {b["name"]: b["samples"] for b in manifest["buckets"]} == {
        "1x48x80": 1, "1x64x64": 1, "1x80x48": 1, "9x48x80": 3, "9x64x64": 1, "17x64x64": 2, "17x80x48": 2}
    report = json.loads((out / "report.json").read_text())
    reasons = {item["path"]: item["reason"] for item in report["unfit"]}
    assert set(reasons) == {"videos/bad_short.mp4", "videos/bad_small.mp4", "videos/bad_wide.mp4"}
    assert "too short" in reasons["videos/bad_short.mp4"] and "too small" in reasons["videos/bad_small.mp4"]

    samples = _samples(out)
    assert len(samples) == 11
    land_a = samples["videos/land_a.mp4"]  # 48 frames at 24 fps -> 16 at 8 fps -> centred 9 = indices 3..11
    assert land_a["bucket"]["name"] == "9x48x80" and land_a["fps"] == 8.0
    assert land_a["frame_indices"] == resample_indices(48, 24.0, 8.0)[3:12].tolist()
    assert land_a["captions"] == ["a clip called land_a", "moving shapes 3"]
    assert land_a["scores"] == {"aesthetic": 5.3, "motion": 0.5}
    source = mixed_clips.parent / "videos/land_a.mp4"
    from components.core.storage import sha256_file
    assert land_a["source"]["sha256"] == sha256_file(source)
    assert samples["videos/img_port.png"]["bucket"]["name"] == "1x80x48"
    assert all(meta["shard"].startswith(meta["bucket"]["name"] + "-") for meta in samples.values())
    # One high-quality re-encode of smooth content: at least 40 dB against the resized source.
    assert min(meta["psnr"] for meta in samples.values()) >= 40.0
    assert report["psnr"]["all"]["min"] >= 40.0

    monkeypatch.setenv("T2V_HOME", str(tracking_home))  # where the session fixture's run was logged
    run = tracking.get_run(manifest["mlflow_run_id"])
    assert run["status"] == "FINISHED" and run["metrics"]["samples"] == 11 and run["metrics"]["unfit"] == 3
    assert run["metrics"]["psnr_min"] >= 40.0 and run["metrics"]["bucket_samples/9x48x80"] == 3


def test_rerun_does_nothing(mixed_shards, mixed_clips):
    out, _ = mixed_shards
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = shard(mixed_clips, out, preset=TEST_PRESET)
    assert again["skipped"] is True and again["samples"] == 11
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run([sys.executable, "-m", "components.data", "shard", "--annotations", str(mixed_clips),
                          "--out", str(out), "--preset", TEST_PRESET], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["skipped"] is True
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_source_uri_resolution():
    assert source_uri({"path": "v/a.mp4"}, "/data/ann/kept.json") == ("/data/ann/v/a.mp4", "")
    assert source_uri({"path": "v/a.mp4", "video_root": "s3://b/raw"}, "/data/kept.json") == ("s3://b/raw/v/a.mp4", "")
    assert source_uri({"path": "/x/v/a.mp4", "video_root": "/x"}, "s3://b/kept.json") == ("/x/v/a.mp4", "")
    assert source_uri({"path": "a.mp4"}, "s3://b/ann/kept.json") == ("s3://b/ann/a.mp4", "")
    # Paths leaving their folder: `..`, absolute elsewhere, another bucket.
    for record in ({"path": "../a.mp4"}, {"path": "/abs/a.mp4", "video_root": "/x"}, {"path": "s3://other/a.mp4"}):
        uri, why = source_uri(record, "s3://b/ann/kept.json")
        assert uri is None and "leaves the data folder" in why


def test_shards_are_byte_identical_across_runs(tracking_home, mixed_shards, mixed_clips, tmp_path):
    """A shard is a function of its inputs, whatever the number of encoder threads."""
    out, _ = mixed_shards
    other = shard(mixed_clips, tmp_path / "again", preset=TEST_PRESET, overrides=["shard.workers=0"])
    first, second = read_shard_manifest(out), read_shard_manifest(other["manifest"])
    assert [b["shards"] for b in first["buckets"]] == [b["shards"] for b in second["buckets"]]
    assert (out / "index.json").read_bytes() == (tmp_path / "again" / "index.json").read_bytes()


def test_changed_config_replaces_the_output(tracking_home, mixed_clips, tmp_path):
    out = tmp_path / "out"
    first = shard(mixed_clips, out, preset=TEST_PRESET, overrides=["shard.frames=[1, 9]"])
    second = shard(mixed_clips, out, preset=TEST_PRESET)
    assert not second["skipped"] and "17x64x64" in second["buckets"] and "17x64x64" not in first["buckets"]
    manifest = read_shard_manifest(out)
    named = {s["uri"] for b in manifest["buckets"] for s in b["shards"]}
    on_disk = {f"shards/{p.name}" for p in (out / "shards").glob("*.tar")}
    assert on_disk == named  # nothing stale from the first configuration


def test_missing_and_broken_sources_are_reported(tracking_home, mixed_clips, tmp_path):
    records = json.loads(mixed_clips.read_text())[:2]
    records.append(records[0] | {"path": "videos/missing.mp4"})
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    records = [r | {"video_root": str(mixed_clips.parent)} for r in records]
    records.append(records[1] | {"path": str(broken), "video_root": str(tmp_path)})
    annotations = tmp_path / "kept.json"
    annotations.write_text(json.dumps(records))
    result = shard(annotations, tmp_path / "out", preset=TEST_PRESET)
    assert result["samples"] == 2 and result["unfit"] == 2
    reasons = {u["path"]: u["reason"] for u in json.loads((tmp_path / "out" / "report.json").read_text())["unfit"]}
    assert "unreadable source" in reasons["videos/missing.mp4"] and "cannot read" in reasons[str(broken)]


def test_bad_annotations_name_entry_and_field(tracking_home, tmp_path):
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps([{"path": "x.mp4", "cap": "c", "resolution": {"height": 8, "width": 8}}]))
    with pytest.raises(ValueError, match=r"a\.json entry 0: video without field 'fps'"):
        shard(annotations, tmp_path / "out", preset=TEST_PRESET)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_verify_detects_corruption(mixed_shards, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(mixed_shards[0], out)
    assert verify(out)["ok"] is True
    target = out / "shards" / "17x64x64-00000.tar"
    data = bytearray(target.read_bytes())
    data[1500] ^= 0xFF  # inside the first sample's payload: the tar still parses
    target.write_bytes(bytes(data))
    result = verify(out / "manifest.json")
    assert result["ok"] is False
    assert any("17x64x64-00000.tar" in p and "sha256" in p for p in result["problems"])

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run([sys.executable, "-m", "components.data", "verify", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "17x64x64-00000.tar" in cli.stderr

    (out / "shards" / "9x48x80-00000.tar").write_bytes(data[:1024])  # truncated shard
    problems = verify(out)["problems"]
    assert any("9x48x80-00000.tar" in p for p in problems)


_SLOW_SHARD = """
import sys, time
import components.data.shard as stage
upload = stage._upload
def slow_upload(*args):
    entry = upload(*args)
    time.sleep(60)  # the test kills us here, after the first shard is complete
    return entry
stage._upload = slow_upload
stage.shard(sys.argv[1], sys.argv[2], sys.argv[3], overrides=["shard.shard_max_samples=1", "shard.upload_workers=1"])
"""


def test_killed_writer_leaves_no_manifest(tracking_home, mixed_clips, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_SHARD, str(mixed_clips), str(out), TEST_PRESET], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "shards").glob("*.tar")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((out / "shards").glob("*.tar")), "the writer never finished a shard"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError):
        verify(out)
    # A new run finishes the job.
    assert shard(mixed_clips, out, preset=TEST_PRESET)["samples"] == 11 and verify(out)["ok"]


_HOLDING_SHARD = """
import pathlib, sys, time
import components.data.shard as stage
upload, held = stage._upload, []
def slow_upload(*args):
    entry = upload(*args)
    if not held:  # once: hold the output folder until the second run has tried it (at most 2 minutes)
        held.append(True)
        pathlib.Path(sys.argv[4]).touch()
        deadline = time.monotonic() + 120
        while pathlib.Path(sys.argv[4]).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    return entry
stage._upload = slow_upload
stage.shard(sys.argv[1], sys.argv[2], sys.argv[3], overrides=["shard.shard_max_samples=1", "shard.upload_workers=1"])
"""


def test_second_writer_on_one_out_is_refused_and_destroys_nothing(tracking_home, mixed_clips, tmp_path):
    """Two `t2v data shard` runs on one --out with different inputs: the second is refused, naming the first;
    the first finishes with every shard its manifest lists (before the lease both exited 0 and the second's
    clean-up deleted the first's shards)."""
    out, signal_file = tmp_path / "shared", tmp_path / "first-is-writing"
    others = json.loads(mixed_clips.read_text())[:3]
    other = tmp_path / "other.json"
    other.write_text(json.dumps([r | {"video_root": str(mixed_clips.parent)} for r in others]))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", _HOLDING_SHARD, str(mixed_clips), str(out), TEST_PRESET,
                              str(signal_file)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not signal_file.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never wrote a shard"
            time.sleep(0.1)
        cli = subprocess.run([sys.executable, "-m", "components.data", "shard", "--annotations", str(other),
                              "--out", str(out), "--preset", TEST_PRESET], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
        assert cli.returncode != 0
        assert f"is being written by 't2v data shard --annotations {mixed_clips}' (process {first.pid} on " in cli.stderr
        assert "Traceback" not in cli.stderr
    finally:
        signal_file.unlink(missing_ok=True)  # the first run goes on
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    assert verify(out)["ok"] and read_shard_manifest(out)["num_samples"] == 11
    assert not (out / ".lease.json").exists()


def test_verify_checks_each_sample_has_its_buckets_shape(mixed_shards, tmp_path):
    """A manifest whose bucket lists were swapped (counts, checksums and keys all still agree) verified ok."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(mixed_shards[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    buckets = {bucket["name"]: bucket for bucket in manifest["buckets"]}
    buckets["1x64x64"]["shards"], buckets["9x64x64"]["shards"] = buckets["9x64x64"]["shards"], buckets["1x64x64"]["shards"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(out)["problems"]
    assert len(problems) == 2, problems
    assert any("9x64x64-00000.tar" in p and "is 9x64x64, not its bucket 1x64x64" in p for p in problems)
    assert any("1x64x64-00000.tar" in p and "is 1x64x64, not its bucket 9x64x64" in p for p in problems)
