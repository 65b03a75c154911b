"""Cached mode of `t2v dit encode`: every clip of the layout read, encoded by the VAE and written into
latent shards; every distinct caption encoded once into the text store.

Each source clip is decoded once and cut to every target bucket it fills by the source loader's transform
(in `encode.read_workers` reader processes, or in this one); the VAE runs in the calling thread on
batches of one bucket; captions are encoded by one background thread and shards are
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
        layout = self.job.layout
        # Where each latent sample goes: (entry number, position in the entry); entries of both splits.
        self.slots: dict[str, tuple[int, int]] = {}
        self.entries: list[dict[str, Any]] = []
        for split in latent_layout.SPLITS:
            folder = storage.join(self.job.out, latent_layout.VAL_FOLDER) if split == "val" else self.job.out
            for bucket in layout[split]:
                shape = (bucket["frames"], bucket["height"], bucket["width"])
                for number, shard in enumerate(bucket["shards"]):
                    for ordinal, source_key in enumerate(shard["keys"]):
                        self.slots[latent_layout.latent_key(source_key, shape)] = (len(self.entries), ordinal)
                    name = f"{latent_layout.SHARD_FOLDER}/{bucket['name']}-{number:05d}.tar"
                    self.entries.append({"name": name, "folder": folder, "samples": shard["samples"], "buffer": {}})
        total = sum(b["samples"] for split in latent_layout.SPLITS for b in layout[split])
        with Progress(latent_layout.STAGE, total, unit="sample", log=log) as self.progress:
            self.done = 0
            self._read_and_encode()
        for future in self.write_futures:
            future.result()
        text_encoder, empty_key, files = self.text_ready.result()
        self._submit_text()  # the write thread is idle: its last captions are queued
        for future in self.text_futures:
            future.result()
        self.text_thread.shutdown()
        self.write_thread.shutdown()
        info = self.texts.close(bytes.fromhex(empty_key))
        text_folder = latent_layout.TEXT_FOLDER
        files |= stage.upload_folder(self.job.staging / text_folder, self.job.out, prefix=f"{text_folder}/")
        results = iter(entry["result"] for entry in self.entries)
        shards: dict[str, Any] = {"files": files}
        for split in latent_layout.SPLITS:
            prefix = "" if split == "train" else f"{latent_layout.VAL_FOLDER}/"
            shards[split] = [{**{k: bucket[k] for k in ("name", "frames", "height", "width", "samples")},
                              "shards": [next(results) for _ in bucket["shards"]]} for bucket in layout[split]]
            for bucket in shards[split]:
                for shard in bucket["shards"]:
                    files[prefix + shard["uri"]] = manifest.file_entry(prefix + shard["uri"], shard["sha256"],
                                                                       shard["bytes"])
        counters = {"vae_seconds": self.vae_seconds, "storage_error": self._storage_error(),
                    "text_encoder": text_encoder}
        return shards, info, counters

    def _read_and_encode(self) -> None:
        """Every source clip read and decoded once, cut to each of its target buckets in the reader, and
        encoded in batches of one (split, bucket)."""
        targets_of = self.job.layout["targets_of"]
        # One clip per step, so every sample is served in epoch 0 (no partial batch carried over).
        config = LoaderConfig(batch_tokens=1, max_batch_size=1, shuffle_shards=1, buckets=sorted(targets_of),
                              num_workers=self.encode.read_workers)
        reader = BucketLoader(self.job.inputs["data"]["uri"], config, rank=0, world_size=1,
                              transform=functools.partial(latent_layout.cut_to_targets, targets_of=targets_of))
        pending: dict[tuple[str, str], list[tuple[str, dict[str, Any], torch.Tensor]]] = {}
        for batch in reader:
            source_key, meta = batch["key"][0], batch["meta"][0]
            split = latent_layout.split_of(source_key, self.encode.val_fraction)
            for name in targets_of[latent_layout.bucket_name(batch["bucket"])]:
                key = latent_layout.latent_key(source_key, latent_layout.bucket_dims(name))
                video = latent_layout.to_video(batch[latent_layout.PIXELS + name][0])  # (3, F, H, W)
                pending.setdefault((split, name), []).append((key, {**meta, "source_key": source_key}, video))
                if len(pending[split, name]) == self.encode.batch_size:
                    self._encode(pending.pop((split, name)))
        for items in pending.values():
            self._encode(items)

    def _encode(self, items: list[tuple[str, dict[str, Any], torch.Tensor]]) -> None:
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
            self.write_futures.append(self.write_thread.submit(self._add, self.slots[key], key, sample_meta, tensors))
        self.done += len(items)
        self.progress.update(self.done)

    def _raise_failures(self) -> None:
        """Fail now, not after the last VAE batch, when a background thread has failed."""
        for future in [self.text_ready, *list(self.text_futures), *self.write_futures]:  # text: appended elsewhere
            if future.done() and future.exception() is not None:
                raise future.exception()
        self.write_futures = [f for f in self.write_futures if not f.done()]  # appended by this thread only

    def _add(self, slot: tuple[int, int], key: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """(write thread) Buffer one sample; write and upload its shard once the shard is complete."""
        meta["text_keys"] = [self._caption_key(caption) for caption in meta["captions"]]
        entry = self.entries[slot[0]]
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
        sha256 = storage.put_file(path, storage.join(entry["folder"], entry["name"]))
        path.unlink()
        entry["result"] = {"uri": entry["name"], "samples": entry["samples"], "bytes": size, "sha256": sha256}

    # ----------------------------------------------------------------- captions

    def _load_text_encoder(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """(text thread) The encoder loaded and saved into the output, the store opened, "" stored first."""
        self.encoder, text_encoder, files = save_text_encoder(self.job.config.text, self.job.device, self.job.staging,
                                                              self.job.out)
        self.encoder_id = text_encoder["sha256"]
        self.texts = TextStoreWriter(self.job.staging / latent_layout.TEXT_FOLDER, self.encoder_id,
                                     self.encoder.max_length, DTYPES[self.encode.text_dtype], self.encode.text_shard_max_bytes)
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
    folder = latent_layout.TEXT_ENCODER_FOLDER
    encoder.save(staging / folder)
    encoder_id = stage.folder_sha256(str(staging / folder))
    files = stage.upload_folder(staging / folder, out, prefix=f"{folder}/")
    entry = {"uri": folder, "max_length": encoder.max_length, "sha256": encoder_id,
             "width": encoder.d_model}
    return encoder, entry, files
