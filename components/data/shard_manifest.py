"""Reading a shard manifest: JSON Schema validation, shard URIs, tar streams (local or S3).

webdataset 1.0 has no `s3://` opener (environment notes): `open_shard` registers one in
`webdataset.gopen_schemes` that streams through `components.core.storage.open_stream` (boto3), so a shard
is read forward without being downloaded first.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jsonschema
import webdataset
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from components.core import storage
from components.core.manifest import manifest_uri  # "folder or manifest.json", for the loader and verify

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"


@functools.cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def read_shard_manifest(manifest_or_folder: str | Path) -> dict[str, Any]:
    """Read and validate a shard manifest; ValueError naming the file and the field when it does not fit."""
    uri = manifest_uri(manifest_or_folder)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no shard manifest at {uri} (the shard stage has not finished there)")
    manifest = storage.read_json(uri)
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "<root>"
        raise ValueError(f"{uri}: invalid shard manifest at '{where}': {exc.message}") from None
    return manifest


def resolve(manifest_uri_: str, relative_or_absolute: str) -> str:
    """A shard or index URI from the manifest: relative ones are below the manifest's folder."""
    if storage.is_s3(relative_or_absolute) or relative_or_absolute.startswith(("/", "file://")):
        return relative_or_absolute
    folder = manifest_uri_.rsplit("/", 1)[0] if "/" in manifest_uri_ else "."
    return storage.join(folder, relative_or_absolute)


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
    assert mode == "rb", mode
    return storage.open_stream(url)


def open_shard(uri: str) -> BinaryIO:
    webdataset.gopen_schemes["s3"] = _gopen_s3
    return webdataset.gopen(uri)


class HashingReader:
    """Passes reads through while hashing and counting, so one pass reads the tar and checks its sha256."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read what the tar reader left (end-of-archive padding), so the digest covers the whole file."""
        while self.read(1 << 20):
            pass


def iter_samples(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """WebDataset samples of a tar stream, in tar order: {"__key__": key, "mp4": bytes, "json": bytes}."""
    sample: dict[str, Any] = {}
    for member in tar_file_iterator(stream):
        key, suffix = base_plus_ext(member["fname"])
        if sample and sample["__key__"] != key:
            yield sample
            sample = {}
        if suffix in sample:
            raise ValueError(f"duplicate file {member['fname']} in shard")
        sample["__key__"] = key
        sample[suffix] = member["data"]
    if sample:
        yield sample
