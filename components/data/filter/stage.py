"""`t2v data filter`: every input video ends in exactly one of `kept.json` or `rejected.json`.

Order of checks (the first that fails is the reason):
1. the entry itself, without touching files: not an object (`bad_entry`), a path that escapes the dataset
   folder (`path_escapes`: `..`, an absolute path elsewhere, or a symlink whose target lies outside unless
   `filter.allow_external_symlinks`), a missing/empty/non-text caption (`bad_caption`), the same path twice
   (`duplicate`);
2. the file (measured in worker processes, see `measure.py` and `pool.py`): `missing_file`, `empty_file`,
   `not_a_video`, `corrupt` (truncated or damaged), `timeout` (not measured within
   `filter.video_timeout_s`: a read or decoder that stalls), or `error` (a decoder or scorer failure, with
   the exception, or a worker process that died);
3. the measurements against the preset's thresholds (`decide`);
4. the same content (sha256) as an earlier kept entry (`duplicate`).

`kept.json` paths are absolute URIs (a local absolute path or s3://...), so the file resolves wherever it
is read from; each entry also keeps `source_path` (the path as given) and `video_root` (the original
annotations folder), recorded in the manifest as well. The probed facts (`num_frames`, `fps`,
`duration`, `resolution`) replace the annotation's claims.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.core import lease, manifest, storage, tracking
from components.core.config import config_hash
from components.core.progress import Progress
from components.data.annotations import annotations_root, caption_text, resolve_inside
from components.data.config import FilterConfig, load_data_config
from components.data.filter.aesthetic import build_scorer
from components.data.filter.measure import measure_job, measurement_key, warm_up
from components.data.filter.pool import START_TIMEOUT_S, Failure, run_jobs
from components.data.filter.report import build_report, write_histograms, write_markdown

log = logging.getLogger(__name__)

ENTRY_REASONS = ("bad_entry", "path_escapes", "bad_caption", "duplicate")
FILE_REASONS = ("missing_file", "empty_file", "not_a_video", "corrupt", "timeout", "error")
SCORE_REASONS = ("too_few_frames", "too_small", "extreme_aspect", "flicker", "scene_cut", "static",
                 "too_much_motion", "low_aesthetic")
REASONS = ENTRY_REASONS + FILE_REASONS + SCORE_REASONS


def measurement_settings(config: FilterConfig) -> dict[str, Any]:
    """What changes a measurement: the cache key is built from this (thresholds are left out)."""
    aesthetic = config.aesthetic.model_dump(mode="json", exclude={"min_score"})
    return {
        "scan": {"sample_frames": config.aesthetic.sample_frames,
                 "flow_stride_seconds": config.motion.stride_seconds, "work_size": config.motion.work_size},
        "aesthetic": aesthetic,
    }


def decide(measured: dict[str, Any], config: FilterConfig) -> tuple[str, str] | None:
    """The first threshold a measured clip fails, as `(reason, message)`; None when it is kept."""
    height, width = measured["resolution"]["height"], measured["resolution"]["width"]
    motion = config.motion
    checks = (
        (measured["num_frames"] < config.min_frames, "too_few_frames",
         f"{measured['num_frames']} frames < filter.min_frames {config.min_frames}"),
        (min(height, width) < config.min_side, "too_small",
         f"{width}x{height} has a side below filter.min_side {config.min_side}"),
        (max(height, width) / min(height, width) > config.max_aspect_ratio, "extreme_aspect",
         f"aspect ratio {max(height, width) / min(height, width):.2f} > filter.max_aspect_ratio {config.max_aspect_ratio}"),
        (measured["flicker"] > motion.max_flicker, "flicker",
         f"brightness flicker {measured['flicker']:.3f} > filter.motion.max_flicker {motion.max_flicker}"),
        (measured["cut"] > motion.max_cut, "scene_cut",
         f"hard cut: histogram jump {measured['cut']:.3f} > filter.motion.max_cut {motion.max_cut}"),
        (measured["motion"] < motion.min, "static",
         f"motion {measured['motion']:.4f} < filter.motion.min {motion.min}"),
        (measured["motion"] > motion.max, "too_much_motion",
         f"motion {measured['motion']:.4f} > filter.motion.max {motion.max} (shaky or too fast)"),
        (measured["aesthetic"] < config.aesthetic.min_score, "low_aesthetic",
         f"aesthetic {measured['aesthetic']:.2f} < filter.aesthetic.min_score {config.aesthetic.min_score}"),
    )
    return next(((reason, message) for failed, reason, message in checks if failed), None)


def _check_entry(index: int, entry: Any, root: str, seen: dict[str, int],
                 allow_external_symlinks: bool = False) -> tuple[str | None, str, str]:
    """`(video_uri, reason, message)`: a URI to measure, or a reason to reject without reading the file."""
    if not isinstance(entry, dict):
        return None, "bad_entry", f"entry {index} is a {type(entry).__name__}, not an object"
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        return None, "bad_entry", f"entry {index}: 'path' must be a non-empty string, got {path!r}"
    uri, why = resolve_inside(root, path, allow_external_symlinks)
    if uri is None:
        return None, "path_escapes", f"entry {index}: {why}"
    cap = entry.get("cap")
    caps = cap if isinstance(cap, list) else [cap]
    if cap is None or not caps or not all(isinstance(c, str) for c in caps) or not caption_text(entry):
        return None, "bad_caption", f"entry {index}: caption {cap!r} is missing, empty or not text"
    if uri in seen:
        return None, "duplicate", f"entry {index}: path {path!r} already listed as entry {seen[uri]}"
    seen[uri] = index
    return uri, "", ""


def measure_all(jobs: list[tuple[int, str, dict, str]], workers: int, timeout_s: float,
                job_fn: Callable = measure_job, initializer: Callable[[], None] | None = None,
                start_timeout_s: float = START_TIMEOUT_S) -> dict[int, dict[str, Any]]:
    """`{index: result}` for every job, measured in worker processes (always: only a separate process can
    be stopped when a decoder hangs inside C code). A video whose worker passes `timeout_s` is rejected as
    `timeout`, one whose worker dies (a decoder crash) as `error`; the worker is replaced and the other
    videos go on."""
    results: dict[int, dict[str, Any]] = {}
    with Progress("filter", len(jobs), unit="video", log=log) as progress:
        for job, outcome in run_jobs(jobs, workers, job_fn, timeout_s, initializer, start_timeout_s):
            index, uri = job[0], job[1]
            if not isinstance(outcome, Failure):
                results[index] = outcome[1]
            elif outcome.timed_out:
                results[index] = {"sha256": None, "reason": "timeout", "cached": False,
                                  "message": f"{uri}: not measured within filter.video_timeout_s = {timeout_s:g} s "
                                             "(reading or decoding stalled); its worker process was stopped"}
            else:
                log.warning("filter: a worker process died measuring %s (exit code %s)", uri, outcome.exit_code)
                results[index] = {"sha256": None, "reason": "error", "cached": False,
                                  "message": f"{uri}: the worker process died while measuring this video "
                                             f"(exit code {outcome.exit_code}; a decoder crash?)"}
            progress.update(len(results))
    return results


def run_filter(
    annotations: str,
    out: str,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Filter the videos listed in `annotations` into `out` (folder or s3:// URI); return a summary."""
    config = load_data_config(preset, overrides).filter
    annotations = str(annotations)
    if config.aesthetic.scorer == "laion":
        # Fail on missing weights here, once, not as one failed worker per video (each worker process
        # builds its own copy before taking videos; workers=1 is the sensible choice for a large model on
        # one device).
        build_scorer(config.aesthetic)
    if not storage.exists(annotations):
        raise FileNotFoundError(f"annotations file {annotations} does not exist")
    raw = storage.read_json(annotations)
    if not isinstance(raw, list):
        raise ValueError(f"{annotations}: expected a JSON list of entries, got {type(raw).__name__}")
    inputs = {"annotations": {"uri": annotations, "sha256": storage.sha256_bytes(storage.read_bytes(annotations))}}
    manifest.require_finished(annotations, inputs["annotations"]["sha256"])  # e.g. synth's, never an unfinished one
    with lease.hold(out, owner=f"t2v data filter --annotations {annotations}") as held:
        return _run_filter(annotations, raw, inputs, out, preset, config, parent_run_id, held)


def _run_filter(annotations: str, raw: list[Any], inputs: dict[str, Any], out: str, preset: str, config: FilterConfig,
                parent_run_id: str | None, held: lease.Lease) -> dict[str, Any]:
    chash = config_hash(config)
    done = manifest.is_complete(out, chash, inputs)
    if done:
        log.info("filter: %s already holds this output (manifest matches); nothing to do", out)
        return done["summary"]
    storage.delete(storage.join(out, manifest.MANIFEST_FILE))  # never look finished while rewriting

    settings = measurement_settings(config)
    root = annotations_root(annotations)
    cache_dir = storage.join(out, "cache")
    workers = config.workers or os.cpu_count() or 1

    params = {"annotations": annotations, "out": str(out), "preset": str(preset), "workers": workers,
              "num_entries": len(raw), "config": config.model_dump(mode="json")}
    with tracking.stage_run("filter", parent_run_id=parent_run_id, params=params) as run:
        started = time.perf_counter()
        rejected: list[dict[str, Any]] = []
        jobs, seen = [], {}
        for index, entry in enumerate(raw):
            uri, reason, message = _check_entry(index, entry, root, seen, config.allow_external_symlinks)
            if uri is None:
                rejected.append({"index": index, "entry": entry, "reason": reason, "message": message})
            else:
                jobs.append((index, uri, settings, cache_dir))
        results = measure_all(jobs, workers, config.video_timeout_s,
                              initializer=functools.partial(warm_up, settings["aesthetic"]),
                              start_timeout_s=config.worker_start_timeout_s)
        elapsed = time.perf_counter() - started

        kept, kept_by_sha, measured_rows = [], {}, []
        for index, uri, _, _ in jobs:
            entry, result = raw[index], results[index]
            record = {"index": index, "entry": entry, "sha256": result.get("sha256")}
            if "reason" in result:
                rejected.append({**record, "reason": result["reason"], "message": result["message"]})
                continue
            measured = result["measured"]
            verdict = decide(measured, config)
            if verdict is None and result["sha256"] in kept_by_sha:
                verdict = ("duplicate", f"entry {index}: same content (sha256) as entry {kept_by_sha[result['sha256']]}")
            measured_rows.append({**measured, "kept": verdict is None, "cached": result["cached"]})
            if verdict is not None:
                rejected.append({**record, "measured": measured, "reason": verdict[0], "message": verdict[1]})
                continue
            kept_by_sha[result["sha256"]] = index
            kept.append({**entry, **measured, "path": uri, "source_path": entry["path"], "video_root": root,
                         "sha256": result["sha256"]})
        rejected.sort(key=lambda r: r["index"])
        assert len(kept) + len(rejected) == len(raw), "every input must end in exactly one of kept/rejected"

        cache_hits = sum(1 for r in results.values() if r.get("cached"))
        report = build_report(config, len(raw), kept, rejected, measured_rows, REASONS, elapsed, len(jobs),
                              cache_hits, workers)
        with storage.staging_dir("t2v-filter-") as staging:
            folder = Path(staging)
            storage.write_json(folder / "kept.json", kept)
            storage.write_json(folder / "rejected.json", rejected)
            storage.write_json(folder / "report.json", report)
            (folder / "report.md").write_text(write_markdown(report))
            write_histograms(folder, measured_rows, config)
            files = {}
            for local in sorted(folder.iterdir()):
                uri = storage.join(out, local.name)
                files[local.name] = manifest.file_entry(uri, storage.put_file(local, uri), local.stat().st_size)
                run.log_artifact(local)
        run.log_metrics(report["metrics"])
        summary = {"kept": storage.join(out, "kept.json"), "rejected": storage.join(out, "rejected.json"),
                   "report": storage.join(out, "report.md"), "manifest": storage.join(out, manifest.MANIFEST_FILE),
                   "num_entries": len(raw), "num_kept": len(kept), "num_rejected": len(rejected),
                   "reasons": report["reasons"], "mlflow_run_id": run.run_id}
        if not kept:
            raise ValueError(f"filter kept none of the {len(raw)} videos in {annotations}; "
                             f"see {summary['report']} for the reasons (no manifest written)")
        held.check()
        manifest.write_manifest(out, manifest.build_manifest(
            stage="filter", preset=str(preset), config=config.model_dump(mode="json"), config_hash=chash,
            inputs=inputs, files=files, mlflow_run_id=run.run_id, video_root=root,
            measurement_key=measurement_key(settings), summary=summary))
    log.info("filter: kept %d of %d videos -> %s", len(kept), len(raw), out)
    return summary
