"""Measure one video (worker-process side): fetch, hash, look up the cache, scan, score, cache.

Measurements, not decisions, are cached (keyed by the file's sha256 and the hash of the settings that
change a measurement), so changing a threshold re-decides from the cache without decoding anything.
A local file is opened once: hashed, then decoded from the same handle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, BinaryIO

from components.core import storage
from components.data.filter.scan import (
    SIGNATURE_BYTES,
    ProbeRejection,
    ScanSettings,
    looks_like_video,
    scan_video,
)

_SCORERS: dict[str, Any] = {}  # one scorer per worker process, built on first use
# Part of every cache key: bump it when what a measurement means changes (2: PyAV decoding, full-range
# luma statistics, colour samples area-filtered from the decoder's planes; 3: samples of a non-integer
# size ratio resized bilinearly to twice the size, then area-halved).
MEASUREMENT_VERSION = 3


def measurement_key(settings: dict[str, Any]) -> str:
    """Hash of what changes a measurement (scan settings and the aesthetic scorer), not the thresholds."""
    keyed = {"version": MEASUREMENT_VERSION, **settings}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def scorer(aesthetic: dict[str, Any]):
    """The aesthetic scorer for these settings, built once per process."""
    from components.data.config import AestheticConfig
    from components.data.filter.aesthetic import build_scorer

    key = json.dumps(aesthetic, sort_keys=True)
    if key not in _SCORERS:
        _SCORERS[key] = build_scorer(AestheticConfig.model_validate(aesthetic))
    return _SCORERS[key]


def warm_up(aesthetic: dict[str, Any]) -> None:
    """Worker-process set-up, before it takes videos: one OpenCV thread (the pool runs one worker per
    core), and the scorer built (loading a model must not count against a video's time limit)."""
    import cv2

    cv2.setNumThreads(1)
    scorer(aesthetic)


def _measure_open(handle: BinaryIO, head: bytes, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    aesthetic_scorer = scorer(settings["aesthetic"])
    scan = scan_video(handle, ScanSettings(**settings["scan"]), name, looks_like_video(head),
                      aesthetic_scorer.input_long_side)
    aesthetic = aesthetic_scorer(scan.samples)
    return {
        "num_frames": scan.num_frames, "fps": round(scan.fps, 6), "duration": round(scan.duration, 6),
        "resolution": {"height": scan.height, "width": scan.width},
        "aesthetic": round(aesthetic, 4), "motion": round(scan.motion, 6),
        "flicker": round(scan.flicker, 6), "cut": round(scan.cut, 6),
    }


def _read_cache(cache_uri: str) -> dict[str, Any] | None:
    local = storage.local_dir(cache_uri)
    if local is None:
        return storage.read_json(cache_uri) if storage.exists(cache_uri) else None
    try:
        return json.loads(local.read_text())
    except (OSError, json.JSONDecodeError):  # absent, or cut short by a crash: measure again
        return None


def _write_cache(cache_uri: str, result: dict[str, Any]) -> None:
    local = storage.local_dir(cache_uri)
    if local is None:
        storage.write_json(cache_uri, result)
        return
    # A cache entry is not an artifact: atomic (temp file + rename) but without storage's fsync, which
    # costs more than measuring a small clip. An entry lost in a power cut is only measured again.
    partial = local.with_name(f".{local.name}.tmp-{os.getpid()}")
    try:
        partial.write_text(json.dumps(result, sort_keys=True))
    except FileNotFoundError:  # first entry: create the folder (once, not per video)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(result, sort_keys=True))
    os.replace(partial, local)


def _measure_file(local: str, uri: str, settings: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    # Opening is the existence check: a path that is no file fails here, and one whose reads block (a
    # stalled network mount, a named pipe) blocks here, where the stage's per-video timeout catches it.
    try:
        handle = open(local, "rb")  # noqa: SIM115  (closed below, after hashing and decoding)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return {"sha256": None, "reason": "missing_file", "message": f"no file at {uri}", "cached": False}
    with handle:
        head = handle.read(SIGNATURE_BYTES)
        if not head:
            return {"sha256": None, "reason": "empty_file", "message": f"{uri} has zero bytes", "cached": False}
        sha = hashlib.file_digest(handle, lambda: hashlib.sha256(head)).hexdigest()
        cache_uri = storage.join(cache_dir, f"{sha}-{measurement_key(settings)}.json")
        cached = _read_cache(cache_uri)
        if cached is not None:
            return {**cached, "cached": True}
        handle.seek(0)
        try:
            result = {"sha256": sha, "measured": _measure_open(handle, head, uri, settings)}
        except ProbeRejection as rejection:
            result = {"sha256": sha, "reason": rejection.reason, "message": str(rejection)}
    _write_cache(cache_uri, result)
    return {**result, "cached": False}


def measure_video(uri: str, settings: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    """`{"sha256", "measured", "cached"}` or `{"sha256", "reason", "message", "cached"}`; never raises for bad input."""
    if not storage.is_s3(uri):
        return _measure_file(uri, uri, settings, cache_dir)
    if not storage.exists(uri):
        return {"sha256": None, "reason": "missing_file", "message": f"no object at {uri}", "cached": False}
    with tempfile.TemporaryDirectory(prefix="t2v-filter-") as tmp:  # measure a local copy, then drop it
        local = str(storage.get_file(uri, os.path.join(tmp, "video")))
        return _measure_file(local, uri, settings, cache_dir)


def measure_job(job: tuple[int, str, dict[str, Any], str]) -> tuple[int, dict[str, Any]]:
    """Pool entry point. A bug in a decoder or scorer must not cost the other videos: it becomes this
    video's rejection (reason `error`, with the exception), never a crash of the stage."""
    index, uri, settings, cache_dir = job
    try:
        return index, measure_video(uri, settings, cache_dir)
    except Exception as exc:  # noqa: BLE001  (recorded as this video's rejection, with its message)
        return index, {"sha256": None, "reason": "error", "message": f"{uri}: {type(exc).__name__}: {exc}",
                       "cached": False}
