"""The filter's report: counts per reason, score distributions, throughput; Markdown and histograms."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from components.data.config import FilterConfig

SCORES = ("aesthetic", "motion", "flicker", "cut")


def _distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    data = np.asarray(values, dtype=np.float64)
    quantiles = np.percentile(data, [10, 50, 90])
    return {"count": int(data.size), "mean": float(data.mean()), "min": float(data.min()),
            "p10": float(quantiles[0]), "p50": float(quantiles[1]), "p90": float(quantiles[2]),
            "max": float(data.max())}


def build_report(config: FilterConfig, num_entries: int, kept: list[dict], rejected: list[dict],
                 measured_rows: list[dict], reasons: tuple[str, ...], elapsed: float, num_jobs: int,
                 cache_hits: int, workers: int) -> dict[str, Any]:
    counts = Counter(r["reason"] for r in rejected)
    frames = sum(row["num_frames"] for row in measured_rows if not row["cached"])
    throughput = {
        "seconds": elapsed, "workers": workers, "videos_read": num_jobs, "cache_hits": cache_hits,
        "videos_per_second": num_jobs / elapsed if elapsed > 0 else 0.0,
        "ms_per_video": 1000 * elapsed / num_jobs if num_jobs else 0.0,
        "frames_decoded": frames, "frames_per_second": frames / elapsed if elapsed > 0 else 0.0,
    }
    metrics = {"num_entries": num_entries, "num_kept": len(kept), "num_rejected": len(rejected),
               "kept_fraction": len(kept) / num_entries if num_entries else 0.0,
               **{f"rejected.{reason}": counts.get(reason, 0) for reason in reasons},
               **{f"throughput.{k}": v for k, v in throughput.items()}}
    return {
        "num_entries": num_entries, "num_kept": len(kept), "num_rejected": len(rejected),
        "reasons": {reason: counts[reason] for reason in reasons if counts.get(reason)},
        "scores": {name: {"all": _distribution([row[name] for row in measured_rows]),
                          "kept": _distribution([row[name] for row in measured_rows if row["kept"]])}
                   for name in SCORES},
        "thresholds": {"aesthetic.scorer": config.aesthetic.scorer, "aesthetic.min_score": config.aesthetic.min_score,
                       "motion.min": config.motion.min, "motion.max": config.motion.max,
                       "motion.max_flicker": config.motion.max_flicker, "motion.max_cut": config.motion.max_cut,
                       "min_frames": config.min_frames, "min_side": config.min_side,
                       "max_aspect_ratio": config.max_aspect_ratio, "video_timeout_s": config.video_timeout_s},
        "throughput": throughput,
        "metrics": metrics,
    }


def write_markdown(report: dict[str, Any]) -> str:
    lines = ["# Filter report", "",
             f"Kept **{report['num_kept']}** of {report['num_entries']} videos; rejected {report['num_rejected']}.", "",
             "## Rejections by reason", "", "| reason | videos |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in report["reasons"].items()] or ["| (none) | 0 |"]
    lines += ["", "## Scores (all measured videos)", "", "| score | n | min | p10 | median | p90 | max |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, groups in report["scores"].items():
        d = groups["all"]
        if d["count"]:
            lines.append(f"| {name} | {d['count']} | {d['min']:.4g} | {d['p10']:.4g} | {d['p50']:.4g} | "
                         f"{d['p90']:.4g} | {d['max']:.4g} |")
    lines += ["", "## Thresholds", ""] + [f"- `{k}`: {v}" for k, v in report["thresholds"].items()]
    t = report["throughput"]
    lines += ["", "## Throughput", "",
              f"{t['videos_read']} videos read in {t['seconds']:.2f} s with {t['workers']} workers: "
              f"{t['videos_per_second']:.2f} videos/s, {t['ms_per_video']:.1f} ms per video, "
              f"{t['frames_per_second']:.0f} decoded frames/s; {t['cache_hits']} served from the cache.", ""]
    return "\n".join(lines)


def write_histograms(folder: Path, measured_rows: list[dict], config: FilterConfig) -> None:
    """`aesthetic.png` and `motion.png`: kept and rejected videos stacked, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = {"aesthetic": [config.aesthetic.min_score], "motion": [config.motion.min, config.motion.max]}
    for name, lines in thresholds.items():
        kept = [row[name] for row in measured_rows if row["kept"]]
        dropped = [row[name] for row in measured_rows if not row["kept"]]
        figure, axis = plt.subplots(figsize=(6, 3.5))
        if kept or dropped:
            axis.hist([kept, dropped], bins=30, stacked=True, label=["kept", "rejected"], color=["tab:green", "tab:red"])
            axis.legend()
        for value in lines:
            axis.axvline(value, color="black", linestyle="--", linewidth=1)
        axis.set_xlabel(name if name == "aesthetic" else "motion (frame diagonals / s)")
        axis.set_ylabel("videos")
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=100)
        plt.close(figure)
