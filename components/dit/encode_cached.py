"""Cached mode of `t2v dit encode`: every clip of the layout read, encoded by the VAE and written into
latent shards; every distinct caption encoded once into the text store.

Clips are decoded by the source loader's worker process and cut to their bucket there; the VAE runs in
the calling thread on batches of one bucket; captions are encoded by one background thread and shards are
serialised, tarred and uploaded by another, so both hide behind the VAE (bench/dit_encode.py).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import webdataset
from safetensors.torch import save as save_safetensors

from components.core import manifest, stage, storage
from components.core.progress import Progress
from components.data.loader import BucketLoader, LoaderConfig
from components.dit import latent_layout
from components.dit.latent_layout import (
    INDEX_FILE,
    SHARD_FOLDER,
    STAGE,
    TEXT_ENCODER_FOLDER,
    TEXT_FOLDER,
    VAL_FOLDER,
)
from components.dit.text import TextEncoder, TextEncoderConfig, load_text_encoder
from components.dit.text_store import TextStoreWriter, text_key

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CachedEncoder:
    """Reads every clip of the layout, encodes it with the VAE, and writes latent shards and the text store.

    A latent shard is written once all of its samples are encoded (the loader serves them shuffled), in
    its entry's order, by a background thread; captions are encoded by another background thread. `job` is
    the stage's run (`encode._Job`): its configuration, layout, VAE, device, staging folder and output."""

    def __init__(self, job: Any):
        self.job, self.encode = job, job.encode
        self.latent_dtype = DTYPES[self.encode.latent_dtype]
        self.text_thread, self.write_thread = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
        # Loading the text encoder (and importing transformers: ~9 s on a busy 2-core machine) overlaps the
        # first VAE batches; the write thread waits for it before it keys the first caption.
        self.text_ready = self.text_thread.submit(self._load_text_encoder)
        self.text_futures: list[Future] = []
        self.write_futures: list[Future] = []
        self.queued_keys: set[str] = set()
        self.text_batch: list[tuple[bytes, str]] = []
        self.vae_seconds = 0.0
        self.error = {name: {"max_abs": 0.0, "sum_sq": 0.0, "sum_ref_sq": 0.0, "count": 0}
                      for name in ("latent_mean", "latent_logvar")}

    def write_all(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        shards: dict[str, Any] = {"files": {}}
        total = sum(b["samples"] for split in latent_layout.SPLITS for b in self.job.layout[split])
        with Progress(STAGE, total, unit="sample", log=log) as progress:
            self.done, self.progress = 0, progress
            for split in latent_layout.SPLITS:
                shards[split] = self._write_split(split) if self.job.layout[split] else []
        text_encoder, empty_key, shards["files"] = self.text_ready.result()
        self._submit_text()  # the write thread is idle: its last captions are queued
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
        counters = {"vae_seconds": self.vae_seconds, "storage_error": self._storage_error(),
                    "text_encoder": text_encoder}
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
        self._raise_failures()
        video = torch.stack([item[2] for item in items]).to(self.job.device)  # (B, 3, F, H, W) in [-1, 1]
        started = time.perf_counter()
        with torch.inference_mode():
            posterior = self.job.vae.encode(video)
            mean, logvar = posterior.mean.float().cpu(), posterior.logvar.float().cpu()  # (B, C, t, h, w)
        self.vae_seconds += time.perf_counter() - started
        stored = {"latent_mean": mean.to(self.latent_dtype), "latent_logvar": logvar.to(self.latent_dtype)}
        if not all(bool(value.isfinite().all()) for value in stored.values()):
            raise ValueError(f"encode.latent_dtype {self.encode.latent_dtype}: the VAE's posterior of "
                             f"{[item[0] for item in items]} overflows it (largest |mean| {float(mean.abs().max()):.4g}); "
                             "use bf16 or fp32")
        self._measure(mean, stored["latent_mean"], "latent_mean")
        self._measure(logvar, stored["latent_logvar"], "latent_logvar")
        for row, (key, meta, _) in enumerate(items):
            sample_meta = {"key": key, "source_key": meta["source_key"], "captions": meta["captions"],
                           "source": meta.get("source")}
            tensors = {name: value[row].clone() for name, value in stored.items()}
            self.write_futures.append(self.write_thread.submit(self._add, slots[key], key, sample_meta, tensors,
                                                               entries, folder))
        self.done += len(items)
        self.progress.update(self.done)

    def _raise_failures(self) -> None:
        """Fail now, not after the last VAE batch, when a background thread has failed."""
        for future in [self.text_ready, *list(self.text_futures), *self.write_futures]:  # text: appended elsewhere
            if future.done() and future.exception() is not None:
                raise future.exception()
        self.write_futures = [f for f in self.write_futures if not f.done()]  # appended by this thread only

    def _add(self, slot: tuple[int, int], key: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
             entries: list[dict[str, Any]], folder: str) -> None:
        """(write thread) Buffer one sample; write and upload its shard once the shard is complete."""
        meta["text_keys"] = [self._caption_key(caption) for caption in meta["captions"]]
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

    def _load_text_encoder(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """(text thread) The encoder loaded and saved into the output, the store opened, "" stored first."""
        self.encoder, text_encoder, files = save_text_encoder(self.job.config.text, self.job.device, self.job.staging,
                                                              self.job.out)
        self.encoder_id = text_encoder["sha256"]
        self.texts = TextStoreWriter(self.job.staging / TEXT_FOLDER, self.encoder_id, self.encoder.max_length,
                                     DTYPES[self.encode.text_dtype], self.encode.text_shard_max_bytes)
        # The empty caption (text dropout, notes §3.2): stored once, whatever the data holds.
        empty_key = text_key(self.encoder_id, self.encoder.max_length, self.encoder.prepare([""])[0])
        self.queued_keys.add(empty_key.hex())
        self._encode_text([(empty_key, "")])
        return text_encoder, empty_key.hex(), files

    @functools.cache  # noqa: B019 - one writer per run, called from the write thread only; raw caption -> key
    def _caption_key(self, caption: str) -> str:
        """The text key of a raw caption; its embedding is queued for the text thread the first time."""
        self.text_ready.result()
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


def save_text_encoder(config: TextEncoderConfig, device: torch.device, staging: Path,
                      out: str) -> tuple[TextEncoder, dict[str, Any], dict[str, Any]]:
    """Load the configured text encoder and save it into `out/text_encoder/`, so training and sampling use
    the very same one. Returns it, its manifest entry {uri, max_length, sha256 (its identity), width} and
    the manifest entries of its files."""
    encoder = load_text_encoder(config, device)
    encoder.save(staging / TEXT_ENCODER_FOLDER)
    encoder_id = stage.folder_sha256(str(staging / TEXT_ENCODER_FOLDER))
    files = stage.upload_folder(staging / TEXT_ENCODER_FOLDER, out, prefix=f"{TEXT_ENCODER_FOLDER}/")
    entry = {"uri": TEXT_ENCODER_FOLDER, "max_length": encoder.max_length, "sha256": encoder_id,
             "width": encoder.d_model}
    return encoder, entry, files
