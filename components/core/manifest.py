"""Stage manifests: every stage writes `manifest.json` last into its output folder.

A manifest makes an artifact describe itself: which stage made it, from which inputs (URIs and
sha256s), with which preset and configuration (and its hash), by which code version, under which MLflow
run, and the sha256 and size of every file it contains. Because it is written last, a folder without a
manifest is unfinished, and a folder whose manifest matches the same inputs and configuration hash is
done: a re-run can skip it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.lease import LEASE_FILE

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

_CHECK_ONLY = contextvars.ContextVar("t2v_manifest_check_only", default=False)


class NotComplete(Exception):
    """Raised at a stage's skip check under `check_only()`: the stage would have to run."""


@contextlib.contextmanager
def check_only() -> Iterator[None]:
    """Within this block a stage function stops at its own skip check (`is_complete`): it returns as usual
    when its output is already finished, and raises NotComplete, before any work, when it is not. The
    pipeline asks a stage this way before handing it to a worker, so the stage's own rule decides."""
    token = _CHECK_ONLY.set(True)
    try:
        yield
    finally:
        _CHECK_ONLY.reset(token)


@functools.cache
def code_version() -> str:
    """The git commit of the running code when available (with `+dirty`), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"t2v-pipeline=={version('t2v-pipeline')}"
        except PackageNotFoundError:
            return "unknown"


def build_manifest(
    *,
    stage: str,
    preset: str,
    config: dict[str, Any],
    config_hash: str,
    inputs: dict[str, dict[str, str]],
    files: dict[str, dict[str, Any]],
    mlflow_run_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The common manifest fields; stages add their own (`extra`), e.g. buckets or metrics."""
    return {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "preset": preset,
        "config": config,
        "config_hash": config_hash,
        "inputs": inputs,
        "files": files,
        "mlflow_run_id": mlflow_run_id,
        **extra,
    }


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> str:
    """Write the manifest into `out` (do this last). Returns the manifest's URI."""
    uri = storage.join(out, MANIFEST_FILE)
    storage.write_json(uri, manifest)
    return uri


def manifest_uri(out_or_uri: str | Path) -> str:
    """A stage's output given as its folder or as its manifest: the manifest's URI."""
    uri = str(out_or_uri)
    return uri if uri.endswith(".json") else storage.join(uri, MANIFEST_FILE)


def read_manifest(out_or_uri: str | Path) -> dict[str, Any] | None:
    """The manifest of an output folder (or at a manifest URI), or None when the stage has not finished."""
    uri = manifest_uri(out_or_uri)
    return storage.read_json(uri) if storage.exists(uri) else None


def is_complete(out: str | Path, config_hash: str, inputs: dict[str, dict[str, str]]) -> dict[str, Any] | None:
    """The existing manifest if `out` holds a finished run with the same configuration and inputs."""
    manifest = read_manifest(out)
    if manifest and manifest.get("config_hash") == config_hash and manifest.get("inputs") == inputs:
        return manifest
    if _CHECK_ONLY.get():
        raise NotComplete(f"{out} is not finished with these inputs and settings")
    return None


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."


def require_finished(file_uri: str | Path, sha256: str | None = None) -> dict[str, Any] | None:
    """Check that `file_uri` comes from a finished stage output before a stage reads it.

    The manifest is looked for beside the file, then one folder up when that one lists files of the
    file's folder (a model folder inside a stage's output). Found: it must list the file with the same sha256 (computed when not given), and it is
    returned. Not found but a lease is there: the output is being written, or its writer was killed before
    finishing, so ValueError. Neither: a file no stage wrote (raw input), None.
    """
    file_uri = str(file_uri)
    folder = _parent(file_uri)
    for candidate in (folder, _parent(folder)):
        manifest_uri = storage.join(candidate, MANIFEST_FILE)
        manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None
        if manifest is not None and candidate != folder:
            below = storage.relative_to(folder, candidate) + "/"
            manifest = manifest if any(name.startswith(below) for name in manifest.get("files", {})) else None
        if manifest is not None:
            entry = manifest.get("files", {}).get(storage.relative_to(file_uri, candidate))
            if entry is None:
                raise ValueError(f"{file_uri}: not among the files of the finished output {manifest_uri}")
            actual = sha256 or storage.sha256_bytes(storage.read_bytes(file_uri))
            if entry.get("sha256") != actual:
                raise ValueError(f"{file_uri}: sha256 {actual} differs from {entry.get('sha256')} in {manifest_uri} "
                                 "(changed after its stage finished)")
            return manifest
        if storage.exists(storage.join(candidate, LEASE_FILE)):
            raise ValueError(f"{file_uri}: {candidate} has no finished manifest (a run is still writing it, or was "
                             "killed before finishing): let that run finish or run its stage again")
    return None


def file_entry(uri: str, sha256: str, size: int) -> dict[str, Any]:
    return {"uri": uri, "sha256": sha256, "bytes": size}
