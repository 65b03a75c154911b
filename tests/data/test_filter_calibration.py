"""The `opencv` thresholds of the tiny preset, calibrated on the synthetic source: the filter rejects
>= 90% of its deliberately bad clips (every defect kind, flicker and blur included) and keeps >= 95% of
its good ones. Runs the pool of worker processes (the default path)."""

from __future__ import annotations

import json
from pathlib import Path

from components.data.filter import run_filter


def test_filter_separates_good_from_bad_synthetic_clips(synth_shapes: Path, tmp_path: Path) -> None:
    truth = json.loads((synth_shapes / "ground_truth.json").read_text())
    run_filter(str(synth_shapes / "annotations.json"), str(tmp_path / "out"), overrides=["filter.workers=2"])
    kept = {e["source_path"] for e in json.loads((tmp_path / "out/kept.json").read_text())}
    rejected = {r["entry"]["path"]: r["reason"] for r in json.loads((tmp_path / "out/rejected.json").read_text())}
    assert kept.isdisjoint(rejected) and kept | set(rejected) == set(truth)

    good = [path for path, t in truth.items() if t["good"]]
    bad = {path: t["defect"] for path, t in truth.items() if not t["good"]}
    assert len(bad) >= 6 and len(good) >= 20
    assert sum(path in kept for path in good) / len(good) >= 0.95
    assert sum(path in rejected for path in bad) / len(bad) >= 0.90
    caught = {defect: rejected.get(path) for path, defect in bad.items()}
    # Each defect is caught, and by the check meant for it.
    assert caught == {"static": "static", "blurred": "low_aesthetic", "noisy": "low_aesthetic",
                      "flicker": "flicker", "too_short": "too_few_frames", "scene_cut": "scene_cut"}
