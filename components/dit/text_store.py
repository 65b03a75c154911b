"""The deduplicated store of caption embeddings that the latent folder's samples point into.

    writer = TextStoreWriter(local_folder, encoder_id, max_length, torch.bfloat16, shard_max_bytes)
    writer.add(key, embedding)          # key: text_key(...) digest; embedding (L, C), valid tokens only
    info = writer.close()               # writes the last shard, then index.safetensors
    store = TextStore(uri)              # local folder or s3://
    [embedding] = store.lookup([key])   # (L, C) in the stored dtype

A caption is keyed by (encoder identity, max_length, sha256 of the cleaned caption): identical captions
are encoded and stored once. Only the valid tokens are kept (the mask is implicit: all ones), which is
what makes the store affordable: at v1.2 sizes a 512-token mT5-XXL embedding is 4 MiB in bf16, the valid
part of a typical 100-200 token caption 0.8-1.6 MiB.

Layout, sized for millions of captions (not one object per caption): `texts-NNNNN.safetensors` shard
files, each one tensor `embeddings` (tokens, C) of concatenated captions; and `index.safetensors`:
`keys` (N, 32) uint8 sha256 digests sorted, with `shard`, `start`, `length` per key (48 bytes per
caption: 48 MB for 1M), metadata in its header. Reading slices a shard through safetensors' memory map,
so a lookup reads only its rows; S3 shards are fetched once into a local cache on first use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from components.core import storage

INDEX_FILE = "index.safetensors"
FORMAT = "t2v-text-store"


def text_key(encoder_id: str, max_length: int, cleaned_caption: str) -> bytes:
    """The 32-byte key of one caption under one encoder and tokenization length."""
    caption_sha = hashlib.sha256(cleaned_caption.encode()).hexdigest()
    return hashlib.sha256(json.dumps([encoder_id, max_length, caption_sha]).encode()).digest()


def _shard_name(number: int) -> str:
    return f"texts-{number:05d}.safetensors"


class TextStoreWriter:
    """Appends embeddings to shard files in `folder` (local); `close` writes the index. Single-threaded."""

    def __init__(self, folder: Path, encoder_id: str, max_length: int, dtype: torch.dtype, shard_max_bytes: int):
        self.folder, self.encoder_id, self.max_length = Path(folder), encoder_id, max_length
        self.dtype, self.shard_max_bytes = dtype, shard_max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keys: dict[bytes, tuple[int, int, int]] = {}  # key -> (shard, start row, length)
        self.pending: list[torch.Tensor] = []
        self.pending_rows = 0
        self.shards = 0
        self.bytes = 0
        self.width: int | None = None

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys

    def add(self, key: bytes, embedding: torch.Tensor) -> None:
        """Store `embedding` (L, C) (valid tokens only) under `key`; a key already stored is skipped."""
        if key in self.keys:
            return
        rows, width = embedding.shape
        if self.width is None:
            self.width = width
        assert width == self.width, (width, self.width)
        self.keys[key] = (self.shards, self.pending_rows, rows)
        self.pending.append(embedding.detach().to("cpu", self.dtype))
        self.pending_rows += rows
        if self.pending_rows * width * self.pending[0].element_size() >= self.shard_max_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        embeddings = torch.cat(self.pending)  # (tokens, C)
        save_file({"embeddings": embeddings}, str(self.folder / _shard_name(self.shards)))
        self.bytes += embeddings.numel() * embeddings.element_size()
        self.shards += 1
        self.pending, self.pending_rows = [], 0

    def close(self, empty_key: bytes) -> dict[str, Any]:
        """Write the last shard and the index; returns a summary for the manifest."""
        self._flush()
        keys = sorted(self.keys)
        entries = np.array([self.keys[k] for k in keys], np.int64).reshape(-1, 3)
        tensors = {
            "keys": torch.from_numpy(np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32).copy()),
            "shard": torch.from_numpy(np.ascontiguousarray(entries[:, 0], np.int32)),
            "start": torch.from_numpy(np.ascontiguousarray(entries[:, 1])),
            "length": torch.from_numpy(np.ascontiguousarray(entries[:, 2], np.int32)),
        }
        metadata = {"format": FORMAT, "encoder_id": self.encoder_id, "max_length": str(self.max_length),
                    "width": str(self.width), "dtype": str(self.dtype).removeprefix("torch."),
                    "shards": str(self.shards), "empty_key": empty_key.hex()}
        save_file(tensors, str(self.folder / INDEX_FILE), metadata=metadata)
        lengths = entries[:, 2]
        return {"entries": len(keys), "shards": self.shards, "bytes": self.bytes, "width": self.width,
                "dtype": metadata["dtype"], "encoder_id": self.encoder_id, "max_length": self.max_length,
                "tokens_mean": float(lengths.mean()) if len(lengths) else 0.0,
                "tokens_max": int(lengths.max()) if len(lengths) else 0,
                "bytes_per_entry": self.bytes / max(1, len(keys)), "empty_key": empty_key.hex()}


class TextStore:
    """Read side: `lookup(keys)` -> embeddings (L_i, C) in the stored dtype."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        index_uri = storage.join(self.uri, INDEX_FILE)
        if not storage.exists(index_uri):
            raise FileNotFoundError(f"{self.uri}: not a text store (no {INDEX_FILE})")
        data = storage.read_bytes(index_uri)
        self.metadata = _metadata(data)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{index_uri}: field 'format' must be {FORMAT!r}, got {self.metadata.get('format')!r}")
        tensors = load_safetensors(data)
        keys = tensors["keys"].numpy()  # (N, 32), sorted
        # The first 8 bytes as one big-endian integer keep the sort order: binary search on them.
        self.prefixes = keys[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        self.keys, self.shard = keys, tensors["shard"].numpy()
        self.start, self.length = tensors["start"].numpy(), tensors["length"].numpy()
        self.empty_key = bytes.fromhex(self.metadata["empty_key"])
        self.max_length = int(self.metadata["max_length"])
        self._handles: dict[int, Any] = {}
        self._cache: Any = None  # a staging folder for shards fetched from S3

    def lookup(self, keys: list[bytes]) -> list[torch.Tensor]:
        out = []
        for key in keys:
            prefix = np.uint64(int.from_bytes(key[:8], "big"))
            row = int(np.searchsorted(self.prefixes, prefix))
            while row < len(self.prefixes) and self.prefixes[row] == prefix and bytes(self.keys[row]) != key:
                row += 1
            if row >= len(self.prefixes) or bytes(self.keys[row]) != key:
                raise KeyError(f"{self.uri}: no text embedding for key {key.hex()}")
            start, length = int(self.start[row]), int(self.length[row])
            out.append(self._shard(int(self.shard[row])).get_slice("embeddings")[start : start + length])
        return out

    def _shard(self, number: int) -> Any:
        if number not in self._handles:
            uri = storage.join(self.uri, _shard_name(number))
            path = storage.local_dir(uri)
            if path is None:
                if self._cache is None:
                    self._cache = storage.staging_dir("t2v-text-store-")
                path = storage.get_file(uri, Path(self._cache.name) / _shard_name(number))
            self._handles[number] = safe_open(str(path), framework="pt")
        return self._handles[number]


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of an in-memory safetensors file (its header is 8 bytes of length, then JSON)."""
    header_size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + header_size]).get("__metadata__") or {})
