"""`t2v dit encode`: the latent precompute. Every clip is encoded once by the VAE and every caption once by
the text encoder, so the DiT trainer reads latents and embeddings instead of re-running both models on
every step as the reference does (reference notes §3.1, §3.6).

The output folder, in the shard manifest's bucket format so the data component's `BucketLoader` reads it:

    shards/<bucket>-NNNNN.tar   samples: `<key>.safetensors` {latent_mean, latent_logvar} (C, t, h, w)
                                unscaled posterior, `<key>.json` {captions, text_keys, source_key, ...}
    val/                        the held-out clips, same layout (shards/, index.json, manifest.json)
    text/                       the deduplicated caption embeddings (`text_store.py`)
    text_encoder/               the text encoder, saved, so training and sampling use the very same one
    index.json                  latent keys per shard
    manifest.json               last: buckets, scale_factor (from the VAE folder's config), the VAE
                                {uri, sha256}, the text encoder {uri, max_length}, bytes per sample

The posterior is stored, not a sample, so training draws fresh VAE noise every epoch as the reference's
per-step encode does. With `encode.mode: online` only the layout is written: its shard entries point at
the source tars, and `components.dit.latents` encodes on the fly (same batches up to the posterior
sample). Overlap (encode_cached.py): each clip is decoded once (optionally in reader processes), text
encoding and shard writing run in background threads, the VAE in the calling thread (bench/dit_encode.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.core import lease, manifest, model_folder, runtime, stage, storage, tracking
from components.core.config import StrictModel, config_hash
from components.dit import latent_layout
from components.dit.config import DiTConfig, load_dit_config
from components.dit.encode_cached import CachedEncoder, save_text_encoder
from components.dit.encode_config import EncodeConfig
from components.dit.latent_layout import (
    INDEX_FILE,
    SHARD_FOLDER,
    STAGE,
    TEXT_ENCODER_FOLDER,
    TEXT_FOLDER,
    VAL_FOLDER,
)
from components.dit.text import TextEncoderConfig
from components.vae import load_vae

log = logging.getLogger(__name__)


class EncodeSettings(StrictModel):
    """What decides the output, hashed for skip-if-finished (not logging or worker counts)."""

    encode: EncodeConfig
    text: TextEncoderConfig


def settings_hash(config: DiTConfig) -> str:
    encode = config.encode.model_copy(update={"read_workers": 0})  # how many readers does not change the output
    return config_hash(EncodeSettings(encode=encode, text=config.text))


def encode_latents(data: str | Path, vae: str | Path, out: str | Path, preset: str = "tiny",
                   overrides: Sequence[str] = (), parent_run_id: str | None = None) -> dict[str, Any]:
    """Encode the shards of `data` (shard folder or manifest) with the VAE folder `vae` into `out`."""
    config = load_dit_config(preset, overrides)
    data_uri, vae_uri, out = _absolute(manifest.manifest_uri(data)), _absolute(vae), str(out).rstrip("/")
    source, index = read_source(data_uri)
    for name in (model_folder.CONFIG_FILE, model_folder.WEIGHTS_FILE):  # never read an unfinished VAE output
        if storage.exists(storage.join(vae_uri, name)):
            manifest.require_finished(storage.join(vae_uri, name))
    inputs = {"data": stage.input_file(data_uri), "vae": {"uri": vae_uri, "sha256": stage.folder_sha256(vae_uri)}}
    with lease.hold(out, owner=f"t2v dit encode --data {data_uri}") as held:
        done = stage.finished(out, settings_hash(config), inputs)
        if done:
            return {"manifest": manifest.manifest_uri(out), "skipped": True, "samples": done["num_samples"],
                    "mlflow_run_id": done["mlflow_run_id"]}
        vae_model = load_vae(vae_uri)
        compression = (vae_model.config.temporal_compression, vae_model.config.spatial_compression)
        layout = latent_layout.plan(data_uri, source, index, config.encode, compression)  # bad targets fail here
        _remove_previous(out)  # only now: a run that fails on its inputs leaves the previous output as it was
        params = {"preset": str(preset), "data": data_uri, "vae": vae_uri, "out": out,
                  "encode": config.encode.model_dump(mode="json"), "text_source": config.text.source,
                  "text_max_length": config.text.max_length}
        with tracking.stage_run(STAGE, parent_run_id=parent_run_id, params=params, tags={"stage": STAGE}) as run:
            job = _Job(config, str(preset), source, layout, vae_model, out, inputs, run.run_id)
            written = job.run()
            run.log_metrics(written["metrics"])
            held.check()
            stage.publish(out, written["manifest"])  # LAST: the folder now reads as finished
    return {"manifest": manifest.manifest_uri(out), "skipped": False, "mlflow_run_id": run.run_id,
            **{k: v for k, v in written["manifest"].items() if k in ("num_samples", "bytes_per_sample", "mode")},
            "metrics": written["metrics"]}


def read_source(uri: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The shard manifest of `t2v data shard` and its index (keys per shard); errors name file and field."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"--data {uri}: no shard manifest there (the shard stage has not finished)")
    source = storage.read_json(uri)
    if not isinstance(source, dict) or source.get("stage") != "shard":
        found = source.get("stage") if isinstance(source, dict) else type(source).__name__
        raise ValueError(f"{uri}: field 'stage' is {found!r}; --data must be a shard manifest of `t2v data shard`")
    for field in ("buckets", "index", "train_fps"):
        if field not in source:
            raise ValueError(f"{uri}: missing field '{field}'")
    for number, bucket in enumerate(source["buckets"]):
        missing = [f for f in ("name", "frames", "height", "width", "shards") if f not in bucket]
        if missing:
            raise ValueError(f"{uri}: missing field 'buckets/{number}/{missing[0]}'")
    index_uri = storage.join(uri.rsplit("/", 1)[0], source["index"]["uri"])
    index = storage.read_json(index_uri, source["index"].get("sha256"))
    if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
        raise ValueError(f"{index_uri}: field 'shards' must map each shard to its sample keys")
    return source, index["shards"]


def _absolute(uri: str | Path) -> str:
    """Local paths made absolute: the latent manifest records them, and online mode reads them from elsewhere."""
    uri = str(uri).rstrip("/")
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def _remove_previous(out: str) -> None:
    """Manifest first, so a folder half removed (or half rewritten after) never reads as finished."""
    storage.delete(manifest.manifest_uri(out))
    for name in (storage.join(VAL_FOLDER, manifest.MANIFEST_FILE), INDEX_FILE):
        storage.delete(storage.join(out, name))
    for folder in (SHARD_FOLDER, VAL_FOLDER, TEXT_FOLDER, TEXT_ENCODER_FOLDER):
        storage.delete_prefix(storage.join(out, folder))


# --------------------------------------------------------------------------- the work


class _Job:
    """One encode run: text encoder saved, clips encoded and written, manifests built (not published)."""

    def __init__(self, config: DiTConfig, preset: str, source: dict[str, Any], layout: dict[str, Any], vae,
                 out: str, inputs: dict[str, Any], run_id: str):
        self.config, self.encode, self.preset, self.source, self.layout = config, config.encode, preset, source, layout
        self.vae, self.out, self.inputs, self.run_id = vae, out, inputs, run_id
        self.device = runtime.select_device("auto")
        if self.encode.tiling is not None:
            tiling = self.vae.config.tiling.model_copy(update={"enabled": self.encode.tiling})
            self.vae.config = self.vae.config.model_copy(update={"tiling": tiling})
        self.vae.to(self.device)  # fp32 like the reference's VAE during training (notes §3.1)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        with storage.staging_dir("t2v-encode-") as staging:
            self.staging = Path(staging)
            if self.encode.mode == "cached":
                shards, text_info, counters = CachedEncoder(self).write_all()
                text_encoder, files = counters["text_encoder"], shards["files"]
            else:
                _, text_encoder, files = save_text_encoder(self.config.text, self.device, self.staging, self.out)
                shards = {split: latent_layout.without_keys(self.layout[split]) for split in latent_layout.SPLITS}
                text_info, counters = None, {"vae_seconds": 0.0, "storage_error": None}
            seconds = time.perf_counter() - started
            return self._manifests(shards, files, text_encoder, text_info, counters, seconds)

    def _manifests(self, shards: dict[str, Any], files: dict[str, Any], text_encoder: dict[str, Any],
                   text_info: dict[str, Any] | None, counters: dict[str, Any], seconds: float) -> dict[str, Any]:
        vae_config = self.vae.config
        common = {
            "mode": self.encode.mode, "scale_factor": vae_config.scale_factor,
            "vae": {"uri": self.inputs["vae"]["uri"], "sha256": self.inputs["vae"]["sha256"]},
            "latent": {"channels": vae_config.latent_channels, "temporal_compression": vae_config.temporal_compression,
                       "spatial_compression": vae_config.spatial_compression, "dtype": self.encode.latent_dtype,
                       "storage_error": counters["storage_error"]},
            "text_encoder": text_encoder, "train_fps": self.source["train_fps"],
        }
        samples = {split: sum(b["samples"] for b in shards[split]) for split in latent_layout.SPLITS}
        text_bytes = text_info["bytes"] if text_info else 0
        latent_bytes = {split: sum(s["bytes"] for b in shards[split] for s in b["shards"]) if self.encode.mode == "cached"
                        else 0 for split in latent_layout.SPLITS}
        total = max(1, samples["train"] + samples["val"])
        bytes_per_sample = {"latent": (latent_bytes["train"] + latent_bytes["val"]) / total, "text": text_bytes / total,
                            "text_per_caption": text_info["bytes_per_entry"] if text_info else None}
        common["text_store"] = text_info and {"uri": TEXT_FOLDER, **text_info}  # URIs relative to the root folder
        val_manifest = None
        if shards["val"]:
            val_files = self._index(VAL_FOLDER, shards["val"], self.layout["val"])
            val_manifest = self._build(shards["val"], val_files, samples["val"], split="val", **common,
                                       root="..", bytes_per_sample=bytes_per_sample)
            uri = storage.join(self.out, VAL_FOLDER, manifest.MANIFEST_FILE)
            files[f"{VAL_FOLDER}/{manifest.MANIFEST_FILE}"] = manifest.file_entry(
                f"{VAL_FOLDER}/{manifest.MANIFEST_FILE}", storage.write_json(uri, val_manifest),
                len(storage.read_bytes(uri)))
            # In the root manifest a val/ file's URI is relative to the root folder, not to val/.
            files |= {f"{VAL_FOLDER}/{name}": {**entry, "uri": f"{VAL_FOLDER}/{entry['uri']}"}
                      for name, entry in val_files.items()}
        files |= self._index("", shards["train"], self.layout["train"])
        metrics = {"samples": samples["train"], "val_samples": samples["val"], "seconds": seconds,
                   "clips_per_second": total / max(seconds, 1e-9), "vae_seconds": counters["vae_seconds"],
                   "bytes_per_sample_latent": bytes_per_sample["latent"], "bytes_per_sample_text": bytes_per_sample["text"],
                   "unfit_clips": self.layout["unfit_clips"]}
        if text_info:
            metrics |= {"text_entries": text_info["entries"], "text_bytes_per_caption": text_info["bytes_per_entry"],
                        "text_tokens_mean": text_info["tokens_mean"]}
        root = self._build(shards["train"], files, samples["train"], split="train", **common,
                           bytes_per_sample=bytes_per_sample,
                           val=val_manifest and {"uri": f"{VAL_FOLDER}/{manifest.MANIFEST_FILE}",
                                                 "num_samples": samples["val"]},
                           unfilled_targets=self.layout["unfilled_targets"],
                           seconds=round(seconds, 3), vae_seconds=round(counters["vae_seconds"], 3))
        return {"manifest": root, "metrics": metrics}

    def _index(self, folder: str, buckets: list[dict[str, Any]], layout: list[dict[str, Any]]) -> dict[str, Any]:
        """index.json of one split: the latent keys of every shard entry, in order."""
        rows = []
        for bucket, planned in zip(buckets, layout, strict=True):
            shape = (bucket["frames"], bucket["height"], bucket["width"])
            for shard, planned_shard in zip(bucket["shards"], planned["shards"], strict=True):
                rows.append({"bucket": bucket["name"], "uri": shard["uri"],
                             "keys": [latent_layout.latent_key(k, shape) for k in planned_shard["keys"]]})
        data = (json.dumps({"shards": rows}, indent=1) + "\n").encode()
        uri = storage.join(self.out, folder, INDEX_FILE) if folder else storage.join(self.out, INDEX_FILE)
        return {INDEX_FILE: manifest.file_entry(INDEX_FILE, storage.write_bytes(uri, data), len(data))}

    def _build(self, buckets: list[dict[str, Any]], files: dict[str, Any], num_samples: int, **extra: Any) -> dict[str, Any]:
        return manifest.build_manifest(
            stage=STAGE, preset=self.preset,
            config={"encode": self.encode.model_dump(mode="json"), "text": self.config.text.model_dump(mode="json")},
            config_hash=settings_hash(self.config), inputs=self.inputs, files=dict(files), mlflow_run_id=self.run_id,
            format="webdataset", num_samples=num_samples, num_unfit=self.layout["unfit_clips"],
            index={"uri": INDEX_FILE, "sha256": files[INDEX_FILE]["sha256"]}, buckets=buckets, **extra)
