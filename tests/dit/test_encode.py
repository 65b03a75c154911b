"""`t2v dit encode`: the latent folder's contents, caption dedup, the val split, skip and redo, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from components.core import storage
from components.data.loader import BucketLoader, LoaderConfig
from components.dit import latent_layout
from components.dit.config import load_dit_config
from components.dit.encode import encode_latents
from components.dit.latents import open_latents
from components.dit.text import load_text_encoder
from components.dit.text_store import TextStore, text_key
from tests.dit.latent_fixtures import SCALE_FACTOR, SHARED_CAPTION, TARGETS, bucket_of_keys, shard_contents
from tests.killing import kill_when_file_appears


def _source(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    index = json.loads((shards / "index.json").read_text())["shards"]
    return manifest, index


def _expected_samples(shards, val_fraction: float) -> dict[str, set[tuple[str, str]]]:
    """{split: {(bucket, source key)}} by the rules: enough frames, near aspect, no upscale."""
    config = load_dit_config("tiny", [TARGETS, f"encode.val_fraction={val_fraction}"]).encode
    manifest, index = _source(shards)
    expected: dict[str, set] = {"train": set(), "val": set()}
    for name in config.targets:
        target = latent_layout.bucket_dims(name)
        for bucket in manifest["buckets"]:
            if latent_layout.fits((bucket["frames"], bucket["height"], bucket["width"]), target, config):
                for shard in bucket["shards"]:
                    for key in index[shard["uri"]]:
                        expected[latent_layout.split_of(key, val_fraction)].add((name, key))
    return expected


def test_latent_folder_contents(cached_latents, source_shards, tiny_vae_folder):
    out, result = cached_latents
    manifest = json.loads((out / "manifest.json").read_text())
    assert not result["skipped"] and manifest["stage"] == "latents" and manifest["mode"] == "cached"
    assert manifest["scale_factor"] == SCALE_FACTOR  # read from the VAE folder's config.json
    assert manifest["vae"]["uri"] == str(tiny_vae_folder) and len(manifest["vae"]["sha256"]) == 64
    assert manifest["inputs"]["data"]["uri"] == str(source_shards / "manifest.json")
    assert manifest["text_encoder"]["uri"] == "text_encoder" and manifest["text_encoder"]["max_length"] == 128
    encoder = load_text_encoder(str(out / "text_encoder"))
    assert encoder.max_length == 128 and encoder.d_model == 64
    # Every file the manifest lists is there with its sha256; every sample is where the rules say.
    for name, entry in manifest["files"].items():
        assert storage.sha256_bytes((out / name).read_bytes()) == entry["sha256"], name
        at = entry["uri"] if entry["uri"].startswith("/") else str(out / entry["uri"])  # relative to the folder
        assert storage.sha256_bytes(storage.read_bytes(at)) == entry["sha256"], (name, entry["uri"])
    expected = _expected_samples(source_shards, 0.2)
    assert expected["train"] and expected["val"]  # the fixture exercises both splits
    for split, folder in (("train", out), ("val", out / "val")):
        split_manifest = json.loads((folder / "manifest.json").read_text())
        buckets, found = bucket_of_keys(folder), set()
        for key, sample in shard_contents(folder / "manifest.json").items():
            meta = json.loads(sample["json"])
            dims = latent_layout.bucket_dims(buckets[key])
            assert meta["key"] == key == latent_layout.latent_key(meta["source_key"], dims)
            found.add((buckets[key], meta["source_key"]))
            tensors = load_safetensors(sample["safetensors"])
            assert set(tensors) == {"latent_mean", "latent_logvar"} and tensors["latent_mean"].dtype == torch.float16
        assert found == expected[split], split
        assert split_manifest["num_samples"] == len(expected[split])
    # Bytes per sample: latents and text, both measured; the storage error of fp16 recorded.
    assert 0 < manifest["bytes_per_sample"]["latent"] and 0 < manifest["bytes_per_sample"]["text"]
    for name in ("latent_mean", "latent_logvar"):
        assert 0 < manifest["latent"]["storage_error"][name]["relative_rms"] < 2**-11  # fp16: 11 significant bits
    used = {key for split in expected.values() for _, key in split}
    unused = sum(1 for keys in _source(source_shards)[1].values() for key in keys if key not in used)
    assert manifest["unfilled_targets"] == [] and manifest["num_unfit"] == unused == 4  # 80x48, and a 48x80 image


def test_identical_captions_are_stored_once(cached_latents, source_shards):
    out, _ = cached_latents
    manifest = json.loads((out / "manifest.json").read_text())
    encoder = load_text_encoder(str(out / "text_encoder"))
    encoder_id = manifest["text_encoder"]["sha256"]
    captions = set()
    text_keys_of: dict[str, set[str]] = {}
    for folder in (out, out / "val"):
        for sample in shard_contents(folder / "manifest.json").values():
            meta = json.loads(sample["json"])
            captions.update(meta["captions"])
            for caption, key in zip(meta["captions"], meta["text_keys"], strict=True):
                text_keys_of.setdefault(caption, set()).add(key)
    assert all(len(keys) == 1 for keys in text_keys_of.values())  # one key per caption, whichever clip or bucket
    shared = text_keys_of[SHARED_CAPTION]
    assert len(shared) == 1
    cleaned = {c: encoder.prepare([c])[0] for c in captions | {""}}
    store = TextStore(str(out / "text"))
    assert manifest["text_store"]["entries"] == len(set(cleaned.values())) == len(store.keys)
    # The stored rows are the caption's valid tokens, as the encoder gives them (bf16 storage).
    embedding, mask = encoder.encode([SHARED_CAPTION], pad_to_max=False)
    [stored] = store.lookup([text_key(encoder_id, encoder.max_length, cleaned[SHARED_CAPTION])])
    assert stored.shape == (int(mask.sum()), 64) and stored.dtype == torch.bfloat16
    torch.testing.assert_close(stored.float(), embedding[0], rtol=2**-8, atol=1e-6)
    [empty] = store.lookup([store.empty_key])
    assert empty.shape == (1, 64)  # "" tokenizes to </s> alone


def test_val_split_is_deterministic_and_disjoint(cached_latents, source_shards):
    out, _ = cached_latents
    sources = {}
    for split, folder in (("train", out), ("val", out / "val")):
        sources[split] = {json.loads(s["json"])["source_key"] for s in shard_contents(folder / "manifest.json").values()}
    assert sources["val"] and not sources["train"] & sources["val"]
    assert all(latent_layout.split_of(key, 0.2) == "val" for key in sources["val"])
    manifest, index = _source(source_shards)
    config = load_dit_config("tiny", [TARGETS, "encode.val_fraction=0.2"]).encode
    first = latent_layout.plan(str(source_shards / "manifest.json"), manifest, index, config, (4, 8))
    again = latent_layout.plan(str(source_shards / "manifest.json"), manifest, index, config, (4, 8))
    assert first == again


def test_rerun_skips_a_finished_folder(cached_latents, source_shards, tiny_vae_folder):
    out, first = cached_latents
    before = (out / "manifest.json").read_bytes()
    again = encode_latents(source_shards, tiny_vae_folder, out, overrides=[TARGETS, "encode.val_fraction=0.2"])
    assert again["skipped"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert (out / "manifest.json").read_bytes() == before


def test_half_finished_folder_is_not_finished(cached_latents, source_shards, tiny_vae_folder, tmp_path):
    out, _ = cached_latents
    copy = tmp_path / "latents"
    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()  # killed after writing everything but the manifest
    with pytest.raises(FileNotFoundError, match="no latent manifest"):
        open_latents(copy)
    with pytest.raises(FileNotFoundError, match="latent folder .* has no manifest"):
        open_latents(copy / "val")
    (copy / "shards" / sorted(p.name for p in (copy / "shards").iterdir())[0]).write_bytes(b"torn")
    result = encode_latents(source_shards, tiny_vae_folder, copy, overrides=[TARGETS, "encode.val_fraction=0.2",
                                                                             "encode.targets=[1x32x32]"])
    assert not result["skipped"]
    manifest = json.loads((copy / "manifest.json").read_text())
    assert {b["name"] for b in manifest["buckets"]} == {"1x32x32"}
    assert {p.name.split("-")[0] for p in (copy / "shards").iterdir()} == {"1x32x32"}  # the torn shard is gone
    assert next(iter(open_latents(copy)))["bucket"] == (1, 32, 32)


def test_bad_inputs_name_file_and_field(cached_latents, source_shards, tiny_vae_folder, tmp_path):
    out, _ = cached_latents
    with pytest.raises(ValueError, match=rf"{out}/manifest.json: field 'stage' is 'latents'"):
        encode_latents(out, tiny_vae_folder, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=rf"--data {tmp_path}/nowhere/manifest.json: no shard manifest"):
        encode_latents(tmp_path / "nowhere", tiny_vae_folder, tmp_path / "b")
    with pytest.raises(ValueError, match=r"encode.targets: 8x32x32 does not fit the VAE"):
        encode_latents(source_shards, tiny_vae_folder, tmp_path / "c", overrides=["encode.targets=[8x32x32]"])
    broken = tmp_path / "broken"
    shutil.copytree(source_shards, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["buckets"][0]["height"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{broken}/manifest.json: missing field 'buckets/0/height'"):
        encode_latents(broken, tiny_vae_folder, tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing written before the inputs are checked


def test_bucket_loader_reads_latent_shards(cached_latents):
    out, _ = cached_latents
    loader = BucketLoader(out / "manifest.json", LoaderConfig(batch_tokens=64, max_batch_size=4), rank=0, world_size=1)
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == json.loads((out / "manifest.json").read_text())["num_samples"]
    for batch in batches:
        frames, height, width = batch["bucket"]
        shape = (len(batch["key"]), 4, (frames - 1) // 4 + 1, height // 8, width // 8)
        assert batch["latent_mean"].shape == shape and batch["latent_logvar"].dtype == torch.float16
        assert "video" not in batch
        assert all(caption in meta["captions"] for caption, meta in zip(batch["caption"], batch["meta"], strict=True))


def test_s3_round_trip(s3_bucket, source_shards, tiny_vae_folder):
    out, overrides = f"{s3_bucket}/latents", ["encode.targets=[1x32x32]", "encode.latent_dtype=bf16"]
    result = encode_latents(source_shards, tiny_vae_folder, out, overrides=overrides)
    assert not result["skipped"] and storage.exists(f"{out}/manifest.json")
    error = storage.read_json(f"{out}/manifest.json")["latent"]["storage_error"]["latent_mean"]["relative_rms"]
    assert 2**-12 < error < 2**-8  # bf16: 8 significant bits
    loader = open_latents(out)
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == result["num_samples"] > 0
    assert batches[0]["text"].shape[-1] == 64 and loader.scale_factor == SCALE_FACTOR
    assert encode_latents(source_shards, tiny_vae_folder, out, overrides=overrides)["skipped"]


def test_killed_run_leaves_nothing_finished_and_a_rerun_completes(source_shards, tiny_vae_folder, tmp_path):
    out = tmp_path / "latents"
    command = [sys.executable, "-m", "components.dit", "encode", "--data", str(source_shards), "--vae",
               str(tiny_vae_folder), "--out", str(out), "--set", TARGETS, "--set", "encode.batch_size=1",
               "--set", "encode.read_workers=1"]
    log = tmp_path / "encode.log"
    with log.open("w") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        kill_when_file_appears(proc, lambda: any((out / "shards").glob("*.tar")), timeout=240, log=log)
    assert (out / ".lease.json").exists() and not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="no latent manifest"):
        open_latents(out)
    result = encode_latents(source_shards, tiny_vae_folder, out, overrides=[TARGETS, "encode.batch_size=1"])
    assert not result["skipped"] and not (out / ".lease.json").exists()
    keys = [key for batch in open_latents(out) for key in batch["key"]]
    assert len(keys) == len(set(keys)) == result["num_samples"]


def test_one_writer_per_folder(source_shards, tiny_vae_folder, tmp_path):
    from components.core import lease

    held = lease.acquire(tmp_path / "latents", owner="another encode")
    try:
        with pytest.raises(lease.LeaseHeld, match="being written by 'another encode'"):
            encode_latents(source_shards, tiny_vae_folder, tmp_path / "latents", overrides=["encode.targets=[1x32x32]"])
    finally:
        lease.release(held)
    assert not (tmp_path / "latents" / "manifest.json").exists()


def test_nested_mlflow_run_with_counts_and_rates(source_shards, tiny_vae_folder, tmp_path):
    from components.core import tracking

    parent = tracking.start_run("pipeline")
    result = encode_latents(source_shards, tiny_vae_folder, tmp_path / "latents", overrides=["encode.targets=[1x32x32]"],
                            parent_run_id=parent.run_id)
    [child] = tracking.child_runs(parent.run_id)
    assert child["run_id"] == result["mlflow_run_id"] and child["name"] == "latents" and child["status"] == "FINISHED"
    metrics = child["metrics"]
    assert metrics["samples"] + metrics["val_samples"] == result["num_samples"] + metrics["val_samples"] > 0
    assert metrics["clips_per_second"] > 0 and metrics["bytes_per_sample_latent"] > 0 and metrics["text_entries"] > 1
