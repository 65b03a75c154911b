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
sample). Overlap: source clips are decoded in a loader worker process, text encoding and shard writing
run in background threads; the VAE runs in the calling thread (bench/dit_encode.py measures the cost).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import webdataset
from safetensors.torch import save as save_safetensors

from components.core import lease, manifest, model_folder, runtime, stage, storage, tracking
from components.core.config import StrictModel, config_hash
from components.core.progress import Progress
from components.data.loader import BucketLoader, LoaderConfig
from components.dit import latent_layout
from components.dit.config import DiTConfig, load_dit_config
from components.dit.encode_config import EncodeConfig
from components.dit.text import TextEncoder, TextEncoderConfig, load_text_encoder
from components.dit.text_store import TextStoreWriter, text_key
from components.vae import load_vae

log = logging.getLogger(__name__)

STAGE = "latents"
SHARD_FOLDER = "shards"
VAL_FOLDER = "val"
TEXT_FOLDER = "text"
TEXT_ENCODER_FOLDER = "text_encoder"
INDEX_FILE = "index.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    vae_model = load_vae(vae_uri)
    compression = (vae_model.config.temporal_compression, vae_model.config.spatial_compression)
    layout = latent_layout.plan(data_uri, source, index, config.encode, compression)  # bad targets fail here
    inputs = {"data": stage.input_file(data_uri), "vae": {"uri": vae_uri, "sha256": stage.folder_sha256(vae_uri)}}
    with lease.hold(out, owner=f"t2v dit encode --data {data_uri}") as held:
        done = stage.finished(out, settings_hash(config), inputs)
        if done:
            return {"manifest": manifest.manifest_uri(out), "skipped": True, "samples": done["num_samples"],
                    "mlflow_run_id": done["mlflow_run_id"]}
        _remove_previous(out)
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
            encoder = load_text_encoder(self.config.text, self.device)
            encoder.save(self.staging / TEXT_ENCODER_FOLDER)
            encoder_id = stage.folder_sha256(str(self.staging / TEXT_ENCODER_FOLDER))
            files = stage.upload_folder(self.staging / TEXT_ENCODER_FOLDER, self.out, prefix=f"{TEXT_ENCODER_FOLDER}/")
            text_encoder = {"uri": TEXT_ENCODER_FOLDER, "max_length": encoder.max_length, "sha256": encoder_id,
                            "width": encoder.d_model}
            if self.encode.mode == "cached":
                shards, text_info, counters = _CachedWriter(self, encoder, encoder_id).write_all()
                files |= shards["files"]
            else:
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
            files |= {f"{VAL_FOLDER}/{name}": entry for name, entry in val_files.items()}
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


class _CachedWriter:
    """Reads every clip of the layout, encodes it with the VAE, and writes latent shards and the text store.

    A latent shard is written once all of its samples are encoded (the loader serves them shuffled), in
    its entry's order, by a background thread; captions are encoded by another background thread."""

    def __init__(self, job: _Job, encoder: TextEncoder, encoder_id: str):
        self.job, self.encode, self.encoder, self.encoder_id = job, job.encode, encoder, encoder_id
        self.latent_dtype = DTYPES[self.encode.latent_dtype]
        self.texts = TextStoreWriter(job.staging / TEXT_FOLDER, encoder_id, encoder.max_length,
                                     DTYPES[self.encode.text_dtype], self.encode.text_shard_max_bytes)
        self.text_thread, self.write_thread = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
        self.text_futures: list[Future] = []
        self.write_futures: list[Future] = []
        self.caption_keys: dict[str, str] = {}  # raw caption -> text key (hex)
        self.queued_keys: set[str] = set()
        self.text_batch: list[tuple[bytes, str]] = []
        self.vae_seconds = 0.0
        self.error = {name: {"max_abs": 0.0, "sum_sq": 0.0, "sum_ref_sq": 0.0, "count": 0}
                      for name in ("latent_mean", "latent_logvar")}

    def write_all(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        empty_key = self._caption_key("")  # the empty caption (text dropout, notes §3.2): stored once
        shards: dict[str, Any] = {"files": {}}
        total = sum(b["samples"] for split in latent_layout.SPLITS for b in self.job.layout[split])
        with Progress(STAGE, total, unit="sample", log=log) as progress:
            self.done, self.progress = 0, progress
            for split in latent_layout.SPLITS:
                shards[split] = self._write_split(split) if self.job.layout[split] else []
        self._submit_text()
        for future in self.text_futures:
            future.result()
        self.text_thread.shutdown()
        info = self.texts.close(bytes.fromhex(empty_key))
        shards["files"] |= stage.upload_folder(self.job.staging / TEXT_FOLDER, self.job.out, prefix=f"{TEXT_FOLDER}/")
        for split in latent_layout.SPLITS:
            for bucket in shards[split]:
                prefix = "" if split == "train" else f"{VAL_FOLDER}/"
                for shard in bucket["shards"]:
                    shards["files"][prefix + shard["uri"]] = manifest.file_entry(prefix + shard["uri"], shard["sha256"],
                                                                                shard["bytes"])
        counters = {"vae_seconds": self.vae_seconds, "storage_error": self._storage_error()}
        return shards, info, counters

    def _write_split(self, split: str) -> list[dict[str, Any]]:
        layout = self.job.layout[split]
        folder = storage.join(self.job.out, VAL_FOLDER) if split == "val" else self.job.out
        virtual = self.job.staging / f"layout-{split}.json"
        storage.write_json(virtual, manifest.build_manifest(
            stage=STAGE, preset=self.job.preset, config={}, config_hash="0" * 64, inputs={}, files={},
            format="webdataset", train_fps=self.job.source["train_fps"], num_samples=sum(b["samples"] for b in layout),
            num_unfit=0, index={"uri": INDEX_FILE, "sha256": "0" * 64}, buckets=latent_layout.without_keys(layout)))
        # One clip per step, so every sample is served in epoch 0 (no partial batch carried over); clips
        # are then batched per bucket below.
        reader = BucketLoader(str(virtual), LoaderConfig(batch_tokens=1, max_batch_size=1, shuffle_shards=1,
                                                         num_workers=self.encode.read_workers),
                              rank=0, world_size=1, transform=latent_layout.cut_to_bucket)
        # Where each latent sample goes: (entry number, position in the entry), and the entry's name.
        slots: dict[str, tuple[int, int]] = {}
        entries: list[dict[str, Any]] = []
        for bucket in layout:
            shape = (bucket["frames"], bucket["height"], bucket["width"])
            for number, shard in enumerate(bucket["shards"]):
                entry = len(entries)
                for ordinal, source_key in enumerate(shard["keys"]):
                    slots[latent_layout.latent_key(source_key, shape)] = (entry, ordinal)
                entries.append({"name": f"{SHARD_FOLDER}/{bucket['name']}-{number:05d}.tar", "samples": shard["samples"],
                                "buffer": {}})
        pending: dict[tuple[int, int, int], list[tuple[str, dict[str, Any], torch.Tensor]]] = {}
        for batch in reader:
            shape = batch["bucket"]
            pending.setdefault(shape, []).append((batch["key"][0], batch["meta"][0], batch["video"][0]))
            if len(pending[shape]) == self.encode.batch_size:
                self._encode(pending.pop(shape), slots, entries, folder)
        for items in pending.values():
            self._encode(items, slots, entries, folder)
        for future in self.write_futures:
            future.result()
        self.write_futures = []
        results = iter(entries)
        return [{**{k: bucket[k] for k in ("name", "frames", "height", "width", "samples")},
                 "shards": [next(results)["result"] for _ in bucket["shards"]]} for bucket in layout]

    def _encode(self, items: list[tuple[str, dict[str, Any], torch.Tensor]], slots: dict[str, tuple[int, int]],
                entries: list[dict[str, Any]], folder: str) -> None:
        video = torch.stack([item[2] for item in items]).to(self.job.device)  # (B, 3, F, H, W) in [-1, 1]
        started = time.perf_counter()
        with torch.inference_mode():
            posterior = self.job.vae.encode(video)
            mean, logvar = posterior.mean.float().cpu(), posterior.logvar.float().cpu()  # (B, C, t, h, w)
        self.vae_seconds += time.perf_counter() - started
        stored = {"latent_mean": mean.to(self.latent_dtype), "latent_logvar": logvar.to(self.latent_dtype)}
        self._measure(mean, stored["latent_mean"], "latent_mean")
        self._measure(logvar, stored["latent_logvar"], "latent_logvar")
        for row, (key, meta, _) in enumerate(items):
            captions = meta["captions"]
            sample_meta = {"key": key, "source_key": meta["source_key"], "captions": captions,
                           "text_keys": [self._caption_key(c) for c in captions], "bucket": meta.get("bucket"),
                           "source": meta.get("source")}
            tensors = {name: value[row].clone() for name, value in stored.items()}
            self.write_futures.append(self.write_thread.submit(self._add, slots[key], key, sample_meta, tensors,
                                                               entries, folder))
        self.done += len(items)
        self.progress.update(self.done)

    def _add(self, slot: tuple[int, int], key: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
             entries: list[dict[str, Any]], folder: str) -> None:
        """(write thread) Buffer one sample; write and upload its shard once the shard is complete."""
        entry = entries[slot[0]]
        entry["buffer"][slot[1]] = (key, json.dumps(meta, sort_keys=True).encode(), save_safetensors(tensors))
        if len(entry["buffer"]) < entry["samples"]:
            return
        path = self.job.staging / Path(entry["name"]).name
        with webdataset.TarWriter(str(path), mtime=0, encoder=False) as tar:  # mtime 0: reproducible bytes
            for ordinal in range(entry["samples"]):
                sample_key, meta_bytes, tensor_bytes = entry["buffer"][ordinal]
                tar.write({"__key__": sample_key, "json": meta_bytes, "safetensors": tensor_bytes})
        entry["buffer"] = {}
        size = path.stat().st_size
        sha256 = storage.put_file(path, storage.join(folder, entry["name"]))
        path.unlink()
        entry["result"] = {"uri": entry["name"], "samples": entry["samples"], "bytes": size, "sha256": sha256}

    # ----------------------------------------------------------------- captions

    @functools.cache  # noqa: B019 - one writer per run; raw caption -> key
    def _caption_key(self, caption: str) -> str:
        """The text key of a raw caption; its embedding is queued for the text thread the first time."""
        cleaned = self.encoder.prepare([caption])[0]
        key = text_key(self.encoder_id, self.encoder.max_length, cleaned).hex()
        if key not in self.queued_keys:
            self.queued_keys.add(key)
            self.text_batch.append((bytes.fromhex(key), caption))
            if len(self.text_batch) >= self.encode.text_batch_size:
                self._submit_text()
        return key

    def _submit_text(self) -> None:
        if self.text_batch:
            self.text_futures.append(self.text_thread.submit(self._encode_text, self.text_batch))
            self.text_batch = []

    def _encode_text(self, batch: list[tuple[bytes, str]]) -> None:
        """(text thread) Encode a batch of new captions; keep only each one's valid tokens."""
        embeddings, mask = self.encoder.encode([caption for _, caption in batch], pad_to_max=False)  # (B, L, C), (B, L)
        for (key, _), embedding, valid in zip(batch, embeddings.float().cpu(), mask.sum(dim=1).tolist(), strict=True):
            self.texts.add(key, embedding[:valid])

    # ----------------------------------------------------------------- storage error

    def _measure(self, reference: torch.Tensor, stored: torch.Tensor, name: str) -> None:
        error = stored.float() - reference
        stats = self.error[name]
        stats["max_abs"] = max(stats["max_abs"], float(error.abs().max()))
        stats["sum_sq"] += float(error.double().pow(2).sum())
        stats["sum_ref_sq"] += float(reference.double().pow(2).sum())
        stats["count"] += reference.numel()

    def _storage_error(self) -> dict[str, Any]:
        """Error of the stored posterior against the fp32 one: max and RMS absolute, RMS relative to RMS."""
        out = {}
        for name, stats in self.error.items():
            rms = (stats["sum_sq"] / max(1, stats["count"])) ** 0.5
            ref_rms = (stats["sum_ref_sq"] / max(1, stats["count"])) ** 0.5
            out[name] = {"max_abs": stats["max_abs"], "rms": rms, "relative_rms": rms / ref_rms if ref_rms else 0.0}
        return out
