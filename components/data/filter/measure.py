"""Measure one video (worker-process side): fetch, hash, look up the cache, scan, score, cache.

Measurements, not decisions, are cached (keyed by the file's sha256 and the hash of the settings that
change a measurement), so changing a threshold re-decides from the cache without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from components.core import storage
from components.data.filter.scan import ProbeRejection, ScanSettings, scan_video

_SCORERS: dict[str, Any] = {}  # one scorer per worker process, built on first use


def measurement_key(settings: dict[str, Any]) -> str:
    """Hash of what changes a measurement (scan settings and the aesthetic scorer), not the thresholds."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _scorer(aesthetic: dict[str, Any]):
    from components.data.config import AestheticConfig
    from components.data.filter.aesthetic import build_scorer

    key = json.dumps(aesthetic, sort_keys=True)
    if key not in _SCORERS:
        _SCORERS[key] = build_scorer(AestheticConfig.model_validate(aesthetic))
    return _SCORERS[key]


def _measure_local(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    scan = scan_video(path, ScanSettings(**settings["scan"]))
    aesthetic = _scorer(settings["aesthetic"])(scan.samples)
    return {
        "num_frames": scan.num_frames, "fps": round(scan.fps, 6), "duration": round(scan.duration, 6),
        "resolution": {"height": scan.height, "width": scan.width},
        "aesthetic": round(aesthetic, 4), "motion": round(scan.motion, 6),
        "flicker": round(scan.flicker, 6), "cut": round(scan.cut, 6),
    }


def measure_video(uri: str, settings: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    """`{"sha256", "measured", "cached"}` or `{"sha256", "reason", "message", "cached"}`; never raises for bad input."""
    with tempfile.TemporaryDirectory(prefix="t2v-filter-") as tmp:
        if storage.is_s3(uri):
            if not storage.exists(uri):
                return {"sha256": None, "reason": "missing_file", "message": f"no object at {uri}", "cached": False}
            local = str(storage.get_file(uri, os.path.join(tmp, "video")))
        else:
            local = uri
            if not os.path.isfile(local):
                return {"sha256": None, "reason": "missing_file", "message": f"no file at {uri}", "cached": False}
        sha = storage.sha256_file(local)
        cache_uri = storage.join(cache_dir, f"{sha}-{measurement_key(settings)}.json")
        if storage.exists(cache_uri):
            return {**storage.read_json(cache_uri), "cached": True}
        try:
            result = {"sha256": sha, "measured": _measure_local(local, settings)}
        except ProbeRejection as rejection:
            result = {"sha256": sha, "reason": rejection.reason, "message": str(rejection).replace(local, uri)}
        storage.write_json(cache_uri, result)
    return {**result, "cached": False}


def measure_job(job: tuple[int, str, dict[str, Any], str]) -> tuple[int, dict[str, Any]]:
    """Pool entry point. A bug in a decoder or scorer must not cost the other videos: it becomes this
    video's rejection (reason `error`, with the exception), never a crash of the stage."""
    index, uri, settings, cache_dir = job
    try:
        return index, measure_video(uri, settings, cache_dir)
    except Exception as exc:  # noqa: BLE001  (recorded as this video's rejection, with its message)
        return index, {"sha256": None, "reason": "error", "message": f"{uri}: {type(exc).__name__}: {exc}",
                       "cached": False}
