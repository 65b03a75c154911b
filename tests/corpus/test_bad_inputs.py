"""The bad-input corpus: inputs a user's imperfect storage and colleagues produce, built here at test time
(no committed binaries), each run through the stage that meets it.

Every case ends in one of two ways: a clear one-line error of a kind the CLI prints as `error: ...`,
naming the file, entry, field or shard (and then nothing is marked finished: no manifest), or a per-item
reject reason in the stage's report while every good item still goes through (nothing good is lost).
`CASES` lists them; the count is in the lead's notes (issue 17).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from components.core import lease, liveness
from components.core import manifest as core_manifest
from components.core.cli import USER_ERRORS
from components.core.storage import sha256_file
from components.data.loader import BucketLoader, LoaderConfig
from components.data.shard import shard
from components.data.verify import verify
from tests.data.clips import ClipSpec, render, write_clip

PRESET = str(Path(__file__).parents[1] / "data" / "shard_preset.yaml")
GOOD = ClipSpec("good", 64, 64, 30, 24.0)  # 10 frames at the preset's 8 fps: bucket 9x64x64
CASES: dict[str, Callable[[Path], None]] = {}


def case(function: Callable[[Path], None]) -> Callable[[Path], None]:
    CASES[function.__name__] = function
    return function


# --------------------------------------------------------------------------- helpers


def expect_error(call: Callable[[], object], pattern: str, out: Path | None = None) -> str:
    """The call fails with a user error whose one-line message matches; `out` holds no manifest."""
    with pytest.raises(USER_ERRORS) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message
    if out is not None:
        assert not (out / "manifest.json").exists()
    return message


def clip(folder: Path, spec: ClipSpec = GOOD, seed: int = 0) -> dict:
    """Write a clip under `folder/videos/` and return its annotation (path relative to `folder`)."""
    relative = f"videos/{spec.name}.{'png' if spec.fps is None else 'mp4'}"
    write_clip(folder / relative, render(spec, seed), spec.fps)
    record = {"path": relative, "cap": f"a clip called {spec.name}",
              "resolution": {"height": spec.height, "width": spec.width}}
    return record if spec.fps is None else record | {"fps": spec.fps, "num_frames": spec.num_frames}


def annotations(folder: Path, records: list) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(records))
    return path


def finished_filter_output(folder: Path, records: list[dict]) -> Path:
    """A filter output as the filter leaves it: kept.json (absolute paths, sha256, video_root), manifest."""
    kept = [{**r, "path": str(folder / r["path"]), "source_path": r["path"], "video_root": str(folder),
             "sha256": sha256_file(folder / r["path"])} for r in records]
    path = folder / "kept.json"
    path.write_text(json.dumps(kept))
    files = {"kept.json": core_manifest.file_entry(str(path), sha256_file(path), path.stat().st_size)}
    core_manifest.write_manifest(folder, core_manifest.build_manifest(
        stage="filter", preset="tiny", config={}, config_hash="0" * 64, inputs={}, files=files))
    return path


def expect_reject(annotations_uri: Path, out: Path, bad_path: str, pattern: str, good: int = 1,
                  overrides: tuple[str, ...] = ()) -> None:
    """The shard stage finishes with every good clip, and reports the bad one with a matching reason."""
    result = shard(annotations_uri, out, preset=PRESET, overrides=overrides)
    reasons = {item["path"]: item["reason"] for item in json.loads((out / "report.json").read_text())["unfit"]}
    assert re.search(pattern, reasons.get(bad_path, "")), reasons
    assert result["samples"] == good and verify(out)["ok"]


# --------------------------------------------------------------------------- shard: per-clip rejects


@case
def video_replaced_after_filtering(tmp: Path) -> None:
    kept = finished_filter_output(tmp, [clip(tmp), clip(tmp, ClipSpec("swapped", 64, 64, 30, 24.0), seed=1)])
    write_clip(tmp / "videos/swapped.mp4", render(ClipSpec("swapped", 64, 64, 30, 24.0), 9), 24.0)
    expect_reject(kept, tmp / "out", str(tmp / "videos/swapped.mp4"), r"changed since it was filtered: sha256")


@case
def declared_size_larger_than_the_file(tmp: Path) -> None:
    small = clip(tmp, ClipSpec("small", 56, 104, 30, 24.0)) | {"resolution": {"height": 400, "width": 400}}
    expect_reject(annotations(tmp, [clip(tmp), small]), tmp / "out", small["path"],
                  r"is 56x104 \(height x width\), its annotation declares 400x400")


@case
def path_with_dotdot(tmp: Path) -> None:
    data = tmp / "data"
    outside = clip(tmp, ClipSpec("outside", 64, 64, 30, 24.0))
    bad = outside | {"path": "../" + outside["path"]}
    expect_reject(annotations(data, [clip(data), bad]), tmp / "out", bad["path"], r"leaves the data folder")


@case
def absolute_path_elsewhere(tmp: Path) -> None:
    data = tmp / "data"
    outside = clip(tmp, ClipSpec("outside", 64, 64, 30, 24.0))
    bad = outside | {"path": str(tmp / outside["path"])}
    expect_reject(annotations(data, [clip(data), bad]), tmp / "out", bad["path"], r"leaves the data folder")


def _symlinked(tmp: Path) -> tuple[Path, dict]:
    data = tmp / "data"
    outside = clip(tmp, ClipSpec("outside", 64, 64, 30, 24.0), seed=3)  # other content than the good clip
    (data / "videos").mkdir(parents=True, exist_ok=True)
    (data / "videos/link.mp4").symlink_to(tmp / outside["path"])
    return data, outside | {"path": "videos/link.mp4"}


@case
def symlink_out_of_the_data_folder(tmp: Path) -> None:
    data, bad = _symlinked(tmp)
    expect_reject(annotations(data, [clip(data), bad]), tmp / "out", bad["path"], r"symlink leading out of the data folder")


@case
def symlink_out_of_the_data_folder_allowed_by_the_config(tmp: Path) -> None:
    data, linked = _symlinked(tmp)
    result = shard(annotations(data, [clip(data), linked]), tmp / "out", preset=PRESET,
                   overrides=["shard.allow_external_symlinks=true"])
    assert result["samples"] == 2 and result["unfit"] == 0


@case
def missing_video(tmp: Path) -> None:
    bad = clip(tmp, ClipSpec("gone", 64, 64, 30, 24.0))
    (tmp / bad["path"]).unlink()
    expect_reject(annotations(tmp, [clip(tmp), bad]), tmp / "out", bad["path"], r"unreadable source: .*no such file")


@case
def not_a_video(tmp: Path) -> None:
    bad = clip(tmp, ClipSpec("text", 64, 64, 30, 24.0))
    (tmp / bad["path"]).write_text("hello, I am not a video")
    expect_reject(annotations(tmp, [clip(tmp), bad]), tmp / "out", bad["path"], r"cannot read 9 frames from .*text\.mp4")


@case
def truncated_video(tmp: Path) -> None:
    bad = clip(tmp, ClipSpec("cut", 64, 64, 30, 24.0))
    data = (tmp / bad["path"]).read_bytes()
    (tmp / bad["path"]).write_bytes(data[: len(data) // 3])
    expect_reject(annotations(tmp, [clip(tmp), bad]), tmp / "out", bad["path"], r"cannot read 9 frames from .*cut\.mp4")


# --------------------------------------------------------------------------- shard: the whole input refused


def _declared(tmp: Path, **fields) -> Path:
    bad = clip(tmp, ClipSpec("declared", 64, 64, 30, 24.0))
    for key, value in fields.items():
        if key in ("height", "width"):
            bad["resolution"][key] = value
        else:
            bad[key] = value
    return annotations(tmp, [clip(tmp), bad])


@case
def num_frames_1e12(tmp: Path) -> None:
    uri = _declared(tmp, num_frames=10**12)
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET),
                 r"annotations\.json entry 1: field 'num_frames' must be a positive integer up to 1e\+06, got 1000000000000",
                 tmp / "out")


@case
def num_frames_1e8_is_refused_at_once(tmp: Path) -> None:
    uri = _declared(tmp, num_frames=10**8)
    started = time.perf_counter()
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"entry 1: field 'num_frames'", tmp / "out")
    assert time.perf_counter() - started < 10  # it took 32 s and 2.2 GB before being rejected


@case
def height_zero(tmp: Path) -> None:
    uri = _declared(tmp, height=0)
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"entry 1: field 'resolution\.height' must be a positive integer",
                 tmp / "out")


@case
def height_not_a_number(tmp: Path) -> None:
    uri = _declared(tmp, height="sixty-four")
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"entry 1: field 'resolution\.height' .* got 'sixty-four'",
                 tmp / "out")


@case
def fps_negative(tmp: Path) -> None:
    uri = _declared(tmp, fps=-24)
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"entry 1: field 'fps' must be a positive number", tmp / "out")


@case
def annotations_not_json(tmp: Path) -> None:
    uri = tmp / "annotations.json"
    uri.write_text('[{"path": "videos/a.mp4", ')
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"annotations\.json: not valid JSON", tmp / "out")


@case
def annotations_not_a_list(tmp: Path) -> None:
    uri = tmp / "annotations.json"
    uri.write_text('{"path": "videos/a.mp4"}')
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"annotations\.json: expected a JSON list", tmp / "out")


@case
def annotations_empty(tmp: Path) -> None:
    uri = annotations(tmp, [])
    expect_error(lambda: shard(uri, tmp / "out", preset=PRESET), r"annotations\.json: no clips to shard", tmp / "out")


@case
def kept_json_of_a_killed_filter_run(tmp: Path) -> None:
    kept = finished_filter_output(tmp, [clip(tmp)])
    (tmp / "manifest.json").unlink()  # killed before its manifest: its lease was never released
    (tmp / lease.LEASE_FILE).write_text(json.dumps({"owner": "t2v data filter", "host": "gone", "pid": "1",
                                                    "heartbeat": "0", "token": "dead"}))
    expect_error(lambda: shard(kept, tmp / "out", preset=PRESET), r"kept\.json: .* has no finished manifest", tmp / "out")


@case
def kept_json_of_a_failed_filter_run(tmp: Path) -> None:
    kept = finished_filter_output(tmp, [clip(tmp)])
    (tmp / "manifest.json").unlink()  # failed (lease released) before its manifest
    expect_error(lambda: shard(kept, tmp / "out", preset=PRESET), r"kept\.json: a filter output without a finished manifest",
                 tmp / "out")


@case
def kept_json_edited_after_the_filter_finished(tmp: Path) -> None:
    kept = finished_filter_output(tmp, [clip(tmp)])
    records = json.loads(kept.read_text())
    kept.write_text(json.dumps([records[0] | {"cap": "another caption"}]))
    expect_error(lambda: shard(kept, tmp / "out", preset=PRESET), r"kept\.json: sha256 \w+ differs .*changed after its stage",
                 tmp / "out")


@contextlib.contextmanager
def held_by_a_live_run(out: Path, owner: str) -> Iterator[int]:
    """`out` leased by another live process (its pid), as a concurrent run leaves it; that process ends after."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / lease.LEASE_FILE).write_text(json.dumps({
            "owner": owner, **liveness.this_owner(), "pid": str(holder.pid), "token": "theirs",
            "acquired_at": "2026-12-07T09:00:00+00:00"}))
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@case
def shard_output_held_by_a_live_run(tmp: Path) -> None:
    uri = annotations(tmp, [clip(tmp)])
    with held_by_a_live_run(tmp / "out", "t2v data shard --annotations elsewhere.json") as pid:
        expect_error(lambda: shard(uri, tmp / "out", preset=PRESET),
                     rf"being written by 't2v data shard --annotations elsewhere\.json' \(process {pid} on ", tmp / "out")
    assert shard(uri, tmp / "out", preset=PRESET)["samples"] == 1  # its process gone, the lease is taken over


@case
def synth_output_held_by_a_live_run(tmp: Path) -> None:
    from components.data.synth import synthesize

    with held_by_a_live_run(tmp / "out", "t2v data synth --num 9") as pid:
        expect_error(lambda: synthesize(str(tmp / "out"), num=2, seed=0), rf"'t2v data synth --num 9' \(process {pid} ",
                     tmp / "out")
        assert sorted(p.name for p in (tmp / "out").iterdir()) == [lease.LEASE_FILE]  # nothing of its output touched


@case
def filter_output_held_by_a_live_run(tmp: Path) -> None:
    from components.data.filter import run_filter

    uri = annotations(tmp, [clip(tmp) | {"duration": 1.25}])
    with held_by_a_live_run(tmp / "out", "t2v data filter --annotations other.json") as pid:
        expect_error(lambda: run_filter(str(uri), str(tmp / "out")), rf"\(process {pid} on .* heartbeat \d+ s ago", tmp / "out")


@case
def eval_output_held_by_a_live_run(tmp: Path) -> None:
    folder = _finished_training_output(tmp)
    with held_by_a_live_run(tmp / "eval", "t2v vae eval --vae other") as pid:
        expect_error(lambda: _evaluate(tmp, folder), rf"'t2v vae eval --vae other' \(process {pid} ", tmp / "eval")


# --------------------------------------------------------------------------- shards read by the loader and verify


def _shards(tmp: Path) -> Path:
    out = tmp / "shards"
    shard(annotations(tmp, [clip(tmp), clip(tmp, ClipSpec("square", 64, 64), seed=2)]), out, preset=PRESET)
    return out


def _first_batch(out: Path, **config) -> None:
    next(iter(BucketLoader(out, LoaderConfig(batch_tokens=160, max_batch_size=2, **config), rank=0, world_size=1)))


def _shard_file(out: Path, bucket: str) -> Path:
    return next((out / "shards").glob(f"{bucket}-*.tar"))


@case
def flipped_byte_in_a_shard_video(tmp: Path) -> None:
    out = _shards(tmp)
    victim = _shard_file(out, "9x64x64")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    expect_error(lambda: _first_batch(out, buckets=["9x64x64"]), rf"shard .*{victim.name}: sha256 \w+ does not match")


@case
def manifest_with_a_wrong_shard_checksum(tmp: Path) -> None:
    out = _shards(tmp)
    text = (out / "manifest.json").read_text()
    entry = json.loads(text)["buckets"][0]["shards"][0]
    (out / "manifest.json").write_text(text.replace(entry["sha256"], "f" * 64))
    expect_error(lambda: _first_batch(out, buckets=[json.loads(text)["buckets"][0]["name"]]),
                 rf"shard .*{Path(entry['uri']).name}: sha256 \w+ does not match the manifest's ffff")


@case
def shard_folder_without_a_manifest(tmp: Path) -> None:
    out = _shards(tmp)
    (out / "manifest.json").unlink()
    expect_error(lambda: _first_batch(out), r"no shard manifest at .*shards/manifest\.json \(the shard stage has not finished")


@case
def manifest_declaring_a_huge_shard(tmp: Path) -> None:
    out = _shards(tmp)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["buckets"][0]["shards"][0]["samples"] = 10**12
    (out / "manifest.json").write_text(json.dumps(manifest))
    expect_error(lambda: _first_batch(out), r"manifest\.json: invalid shard manifest at 'buckets/0/shards/0/samples'")


@case
def manifest_with_swapped_bucket_lists(tmp: Path) -> None:
    out = _shards(tmp)
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["buckets"]
    first["shards"], second["shards"] = second["shards"], first["shards"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(out)["problems"]
    assert len(problems) == 2 and all("not its bucket" in p for p in problems), problems


# --------------------------------------------------------------------------- the filter


@case
def filter_symlink_and_dotdot_out_of_the_data_folder(tmp: Path) -> None:
    from components.data.filter import run_filter

    data, linked = _symlinked(tmp)
    synth_like = clip(data, ClipSpec("good", 64, 64, 30, 24.0)) | {"duration": 30 / 24.0}
    records = [synth_like, linked | {"duration": 1.25}, synth_like | {"path": "../videos/outside.mp4"}]
    run_filter(str(annotations(data, records)), str(tmp / "filtered"), overrides=["filter.workers=1"])
    rejected = {r["index"]: (r["reason"], r["message"]) for r in json.loads((tmp / "filtered/rejected.json").read_text())}
    assert rejected[1][0] == "path_escapes" and "symlink leading out" in rejected[1][1]
    assert rejected[2][0] == "path_escapes" and "leaves the data folder" in rejected[2][1]
    kept = json.loads((tmp / "filtered/kept.json").read_text())
    assert [entry["source_path"] for entry in kept] == ["videos/good.mp4"] and len(rejected) == 2


# --------------------------------------------------------------------------- model folders


def _model_folder(tmp: Path) -> Path:
    from components.vae.config import load_vae_config
    from components.vae.model import CausalVAE
    from components.vae.official import save_vae

    folder = tmp / "model"
    save_vae(folder, CausalVAE(load_vae_config("tiny").model))
    return folder


def _load(folder: Path) -> None:
    from components.vae import load_vae

    load_vae(folder)


@case
def truncated_model_weights(tmp: Path) -> None:
    folder = _model_folder(tmp)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expect_error(lambda: _load(folder), r"model\.safetensors: not a readable safetensors file \(truncated or damaged\)")


def _edit_config(folder: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@case
def model_config_negative_hidden_size(tmp: Path) -> None:
    folder = _model_folder(tmp)
    _edit_config(folder, lambda c: c["model"].update(hidden_size=-8))
    expect_error(lambda: _load(folder), r"config\.json: field 'model\.hidden_size' is invalid: Input should be greater than")


@case
def model_config_negative_scale_factor(tmp: Path) -> None:
    folder = _model_folder(tmp)
    _edit_config(folder, lambda c: c["model"].update(scale_factor=-5))
    expect_error(lambda: _load(folder), r"config\.json: field 'model\.scale_factor' is invalid")


@case
def model_config_unknown_top_level_key(tmp: Path) -> None:
    folder = _model_folder(tmp)
    _edit_config(folder, lambda c: c.update(learning_rate=1e-4))
    expect_error(lambda: _load(folder), r"config\.json: field 'learning_rate' is not a setting")


@case
def official_config_negative_hidden_size(tmp: Path) -> None:
    from components.vae.official import official_to_config

    expect_error(lambda: official_to_config({"hidden_size": -8}, "official/config.json"),
                 r"official/config\.json: field 'hidden_size' is invalid")


def _finished_training_output(tmp: Path) -> Path:
    """A training stage's output as it leaves it: model/ and, last, a manifest listing its files."""
    out = tmp / "vae-phase2"
    folder = _model_folder(out)
    files = {f"model/{p.name}": core_manifest.file_entry(str(p), sha256_file(p), p.stat().st_size) for p in folder.iterdir()}
    core_manifest.write_manifest(out, core_manifest.build_manifest(
        stage="vae-phase2", preset="tiny", config={}, config_hash="0" * 64, inputs={}, files=files))
    return folder


def _evaluate(tmp: Path, folder: Path) -> None:
    from components.vae.evaluate import evaluate_vae

    evaluate_vae(str(folder), str(_shards(tmp)), str(tmp / "eval"))


@case
def eval_of_a_model_from_a_killed_training_run(tmp: Path) -> None:
    folder = _finished_training_output(tmp)
    (folder.parent / "manifest.json").unlink()
    (folder.parent / lease.LEASE_FILE).write_text(json.dumps({"owner": "t2v vae train", "host": "gone", "pid": "1",
                                                              "heartbeat": "0", "token": "dead"}))
    expect_error(lambda: _evaluate(tmp, folder), r"config\.json: .*vae-phase2 has no finished manifest", tmp / "eval")


@case
def eval_of_model_weights_edited_after_training(tmp: Path) -> None:
    folder = _finished_training_output(tmp)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    expect_error(lambda: _evaluate(tmp, folder), r"model\.safetensors: sha256 \w+ differs .*\(changed after its stage finished\)",
                 tmp / "eval")


# --------------------------------------------------------------------------- the corpus, run


def test_the_corpus_covers_every_point_of_issue_17():
    assert len(CASES) >= 30, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_HOME", str(tmp_path / "t2v-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.pop("T2V_PARENT_RUN_ID", None)
    work = tmp_path / "case"
    work.mkdir()
    CASES[name](work)
    shutil.rmtree(work)  # what a case leaves is never read by another
