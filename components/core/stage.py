"""What every stage does around its work: resolve and checksum its inputs, skip when already finished,
and publish its output folder (files first, `manifest.json` last).

    inputs = {"data": stage.input_file(manifest.manifest_uri(data))}
    done = stage.finished(out, stage_hash, inputs)      # the manifest of a finished run, or None
    ...
    files = stage.upload_folder(local, out)             # {relative name: {uri, sha256, bytes}}
    stage.publish(out, manifest.build_manifest(..., files=files))
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from components.core import manifest, model_folder, storage

log = logging.getLogger(__name__)


def input_file(uri: str) -> dict[str, str]:
    """An input entry for a manifest: one file and its sha256."""
    return {"uri": uri, "sha256": storage.sha256_bytes(storage.read_bytes(uri))}


def folder_sha256(uri: str | Path, files: list[str] | None = None) -> str:
    """One checksum over a folder's files (relative names and contents), so any change is a changed input."""
    files = storage.list_files(uri) if files is None else files
    if not files:
        raise FileNotFoundError(f"{uri}: no files")
    parts = [f"{storage.relative_to(f, str(uri))}:{storage.sha256_bytes(storage.read_bytes(f))};" for f in files]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def finished(out: str | Path, stage_hash: str, inputs: dict[str, dict[str, str]]) -> dict[str, Any] | None:
    """The manifest of `out` when it already holds this stage's result for these inputs and settings."""
    done = manifest.is_complete(out, stage_hash, inputs)
    if done:
        log.info("%s is already finished with these inputs and settings: nothing to do", out)
    return done


def check_unchanged(folder: str | Path, stage_manifest: dict[str, Any], prefix: str) -> None:
    """The files under `prefix` of a finished output still match the sha256s in its manifest (looked up by
    name inside `folder`: the folder may have moved); a ValueError names the first that does not."""
    for name, entry in stage_manifest["files"].items():
        uri = storage.join(folder, name)
        if name.startswith(prefix) and storage.sha256_bytes(storage.read_bytes(uri)) != entry["sha256"]:
            raise ValueError(f"{uri} does not match the sha256 in its manifest.json (changed after its stage "
                             "finished); re-run that stage or restore the file")


def file_entry(uri: str) -> dict[str, Any]:
    """A manifest file entry of a file already in the store."""
    data = storage.read_bytes(uri)
    return manifest.file_entry(uri, storage.sha256_bytes(data), len(data))


def upload_folder(local: Path, out: str | Path, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Put every file of the local folder `local` under `out/prefix`; their manifest entries by name. Within
    each folder a model's config goes last (model_folder.WRITE_ORDER): a folder with a config is complete."""
    files = {}
    for path in sorted((p for p in local.rglob("*") if p.is_file()), key=_upload_order):
        name = f"{prefix}{path.relative_to(local).as_posix()}"
        uri = storage.join(out, name)
        files[name] = manifest.file_entry(uri, storage.put_file(path, uri), path.stat().st_size)
    return files


def _upload_order(path: Path) -> tuple[str, int, str]:
    rank = model_folder.WRITE_ORDER.index(path.name) if path.name in model_folder.WRITE_ORDER else -1
    return (path.parent.as_posix(), rank, path.name)


def publish(out: str | Path, stage_manifest: dict[str, Any]) -> str:
    """Write the manifest after every other file: from now on `out` reads as finished."""
    return manifest.write_manifest(out, stage_manifest)
