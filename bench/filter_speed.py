"""Filter speed vs pure decoding (the decode-bound limit) on synthetic clips, four sets.

    python bench/filter_speed.py [--num 24] [--repeats 5] [--sets NAME ...]

Sets: `t2v data synth` output as it comes (H.264: libx264 yuv420p, crf 18, veryfast), half shape clips and
half photo clips (camera moves over photographs: natural texture), at the resolutions of real sources (long
sides 480-720 px and 720-1080 px: the goal's two resolutions), and two informative smaller ones where the
filter's fixed per-video work (~3.7 ms: flow pairs, three colour samples, cache entry) weighs more: 256-360 px
H.264, and shape clips in mp4v at 64-160 px (`synth.codec=mp4v`: MPEG-4 part 2 decodes a tiny frame in ~14 us).

For each set, per-video time of
(a) decode: the decode-bound limit, with the decoder the filter uses (PyAV/FFmpeg, one thread): open the
    file and decode every frame to the codec's own format (`container.decode`), no colour conversion,
    no copy out of the decoder's frames; nothing faster decodes every frame,
(b) scan: the filter's single decoding pass (`scan_video`: probe, motion, flicker, cut, frame samples),
(c) filter: the filter's whole per-video work (`measure_video`: open once, sha256, (b), aesthetic score,
    cache write; fresh cache),
all sequential in this process, interleaved, best of `--repeats`, in CPU time of this process
(`time.process_time`; OpenCV limited to one thread): on a shared machine wall time swings by 2x between
identical runs, CPU time much less. Then the whole stage (`run_filter`: worker pool, MLflow, reports) for
videos per second. Goal: (c) <= 1.5 x (a).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import cv2  # noqa: E402

from components.data.config import load_data_config  # noqa: E402
from components.data.filter import run_filter  # noqa: E402
from components.data.filter.measure import measure_video, scorer  # noqa: E402
from components.data.filter.scan import ScanSettings, scan_video  # noqa: E402
from components.data.filter.stage import measurement_settings  # noqa: E402
from components.data.synth import synthesize  # noqa: E402

SETS = {  # name: ([(kind, share of --num)], synth overrides)
    "H.264 256-360 px": ([("shapes", 0.5), ("photos", 0.5)], ["synth.min_side=256", "synth.max_side=360"]),
    "H.264 480-720 px": ([("shapes", 0.5), ("photos", 0.5)], ["synth.min_side=480", "synth.max_side=720"]),
    "H.264 720-1080 px": ([("shapes", 0.5), ("photos", 0.5)], ["synth.min_side=720", "synth.max_side=1080"]),
    "mp4v 64-160 px (shapes)": ([("shapes", 1.0)], ["synth.min_side=64", "synth.max_side=160", "synth.codec=mp4v"]),
}


def decode_all(path: str) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def synth_set(folder: Path, num: int, parts: list[tuple[str, float]], overrides: list[str]) -> None:
    """One annotations file over the parts' synth outputs (each in its own subfolder)."""
    entries = []
    for kind, share in parts:
        synthesize(str(folder / kind), round(num * share), seed=0, kind=kind,
                   overrides=[*overrides, "synth.bad_fraction=0"])
        entries += [{**e, "path": f"{kind}/{e['path']}"}
                    for e in json.loads((folder / kind / "annotations.json").read_text())]
    (folder / "annotations.json").write_text(json.dumps(entries))


def best_of_interleaved(repeats: int, fns: dict) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: min(values) for name, values in times.items()}


def time_set(paths: list[str], settings: dict, repeats: int) -> dict[str, float]:
    scan_settings = ScanSettings(**settings["scan"])
    long_side = scorer(settings["aesthetic"]).input_long_side
    for path in paths:  # every clip is a usable video: the filter does the whole pass on each
        assert "measured" in measure_video(path, settings, tempfile.mkdtemp())

    def filter_once() -> None:
        with tempfile.TemporaryDirectory() as cache:
            for path in paths:
                measure_video(path, settings, cache)

    return best_of_interleaved(repeats, {
        "decode": lambda: [decode_all(p) for p in paths],
        "scan": lambda: [scan_video(p, scan_settings, p, True, long_side) for p in paths],
        "filter": filter_once,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS), metavar="NAME")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core per video, as in the worker pool
    settings = measurement_settings(load_data_config("tiny").filter)
    results = {}
    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        os.environ["T2V_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for name, (parts, overrides) in SETS.items():
            if name not in args.sets:
                continue
            folder = Path(tmp) / name.replace(" ", "").replace(".", "").replace("(", "").replace(")", "")
            synth_set(folder, args.num, parts, overrides)
            entries = json.loads((folder / "annotations.json").read_text())
            paths = [str(folder / e["path"]) for e in entries]
            best = time_set(paths, settings, args.repeats)
            start = time.perf_counter()
            run_filter(str(folder / "annotations.json"), str(Path(tmp) / f"out-{folder.name}"))
            stage_s = time.perf_counter() - start
            results[name] = {
                "videos": len(paths), "frames": sum(e["num_frames"] for e in entries),
                **{f"{k}_ms_per_video": 1000 * v / len(paths) for k, v in best.items()},
                "scan_over_decode": best["scan"] / best["decode"],
                "filter_over_decode": best["filter"] / best["decode"],
                "decode_videos_per_s": len(paths) / best["decode"],
                "filter_videos_per_s_1proc": len(paths) / best["filter"],
                "stage_videos_per_s": len(paths) / stage_s,
                "stage_seconds": stage_s,
            }
    print(f"{'set':<24}{'videos':>7}{'frames':>8}{'decode ms/v':>13}{'scan ms/v':>11}{'filter ms/v':>13}"
          f"{'scan/dec':>10}{'filter/dec':>12}{'stage v/s':>11}")
    for name, r in results.items():
        print(f"{name:<24}{r['videos']:>7}{r['frames']:>8}{r['decode_ms_per_video']:>13.2f}{r['scan_ms_per_video']:>11.2f}"
              f"{r['filter_ms_per_video']:>13.2f}{r['scan_over_decode']:>10.2f}{r['filter_over_decode']:>12.2f}"
              f"{r['stage_videos_per_s']:>11.1f}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
