"""Calibration of the filter's `opencv` thresholds on the synthetic source (the numbers in presets/tiny.yaml).

    python bench/filter_calibration.py [--workers 2] [--rows rows.json]

Corpus: `t2v data synth` with the tiny preset (20 % deliberately bad clips, every defect in turn): shape
clips from seeds 0-5 (40 each), photo clips from seeds 0-1 (30 each), and 12 shape clips at 480-720 px
(seed 0). Each set goes through the whole stage (`run_filter`); the script prints how many good clips are
kept and bad ones rejected (and by which check), and the ranges of each score that the thresholds must
separate: good clips' lowest aesthetic vs blurred/noisy clips' highest, static clips' highest motion vs
good clips' lowest, and likewise for flicker and cuts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.filter import run_filter  # noqa: E402
from components.data.synth import synthesize  # noqa: E402

CORPUS = [  # (name, kind, seed, num, synth overrides)
    *[(f"shapes-{seed}", "shapes", seed, 40, []) for seed in range(6)],
    *[(f"photos-{seed}", "photos", seed, 30, []) for seed in range(2)],
    ("shapes-480-720", "shapes", 0, 12, ["synth.min_side=480", "synth.max_side=720"]),
]


def measure_corpus(folder: Path, workers: int) -> list[dict]:
    """One row per clip: its ground truth, the filter's verdict and its measurements."""
    rows = []
    for name, kind, seed, num, overrides in CORPUS:
        source, out = folder / name, folder / f"out-{name}"
        synthesize(str(source), num, seed=seed, kind=kind, overrides=overrides)
        run_filter(str(source / "annotations.json"), str(out), overrides=[f"filter.workers={workers}"])
        truth = json.loads((source / "ground_truth.json").read_text())
        verdicts = {e["source_path"]: (None, e) for e in json.loads((out / "kept.json").read_text())}
        verdicts |= {r["entry"]["path"]: (r["reason"], r.get("measured", {}))
                     for r in json.loads((out / "rejected.json").read_text())}
        rows += [{"set": name, "path": path, "defect": t["defect"], "reason": verdicts[path][0],
                  **{k: verdicts[path][1].get(k) for k in ("aesthetic", "motion", "flicker", "cut")}}
                 for path, t in truth.items()]
    return rows


def summarise(rows: list[dict]) -> dict:
    good = [r for r in rows if r["defect"] is None]
    bad = [r for r in rows if r["defect"] is not None]

    def extreme(fn, selected: list[dict], key: str) -> float | None:
        values = [r[key] for r in selected if r[key] is not None]
        return round(fn(values), 4) if values else None

    by_defect = {d: [r for r in bad if r["defect"] == d] for d in sorted({r["defect"] for r in bad})}
    return {
        "good_kept": f"{sum(r['reason'] is None for r in good)}/{len(good)}",
        "bad_rejected": f"{sum(r['reason'] is not None for r in bad)}/{len(bad)}",
        "good_rejected_by": dict(Counter(r["reason"] for r in good if r["reason"] is not None)),
        "bad_caught_by": {d: dict(Counter(str(r["reason"]) for r in rs)) for d, rs in by_defect.items()},
        "aesthetic": {"good_min": extreme(min, good, "aesthetic"),
                      "good_median": extreme(lambda v: sorted(v)[len(v) // 2], good, "aesthetic"),
                      "blurred_max": extreme(max, by_defect.get("blurred", []), "aesthetic"),
                      "noisy_max": extreme(max, by_defect.get("noisy", []), "aesthetic")},
        "motion": {"static_max": extreme(max, by_defect.get("static", []), "motion"),
                   "good_min": extreme(min, good, "motion"), "good_max": extreme(max, good, "motion")},
        "flicker": {"good_max": extreme(max, good, "flicker"),
                    "flicker_min": extreme(min, by_defect.get("flicker", []), "flicker")},
        "cut": {"good_max": extreme(max, good, "cut"), "scene_cut_min": extreme(min, by_defect.get("scene_cut", []), "cut")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=Path, help="also write every clip's verdict and scores to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="t2v-calibration-") as tmp:
        os.environ["T2V_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows = measure_corpus(Path(tmp), args.workers)
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1))
    print(json.dumps(summarise(rows), indent=2))


if __name__ == "__main__":
    main()
