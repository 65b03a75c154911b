"""Shard writing and loader throughput on synthetic clips (CPU, local disk).

    python bench/shard_speed.py [--clips 96] [--workers 2]

Measures: (1) the shard stage (decode + crop/resize + one libx264 encode + PSNR check + tar + put) in
clips/s and MB/s of shards written, against a plain copy of the same shard bytes; (2) the loader's
samples/s over one epoch (0 and 2 workers) against decode-only (reading every tar in order and decoding
each mp4, no schedule, no tensors) on the same shards. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.data.clips import ClipSpec, write_dataset  # noqa: E402


def bench_specs(count: int) -> list[ClipSpec]:
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = [(144, 144), (126, 224), (224, 126), (180, 320)]
    specs = []
    for number in range(count):
        height, width = shapes[number % len(shapes)]
        if number % 5 == 0:
            specs.append(ClipSpec(f"img{number}", height, width))
        else:
            specs.append(ClipSpec(f"vid{number}", height, width, int(rng.integers(48, 96)), 24.0))
    return specs


# The bench set's shard settings (also bench/loader_checksum.py): three frame counts, three resolutions.
SHARD_OVERRIDES = ["shard.train_fps=12", "shard.frames=[1,17,33]",
                   "shard.resolutions=[[128,128],[112,192],[192,112]]", "shard.shard_max_samples=16"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("T2V_HOME", tempfile.mkdtemp(prefix="t2v-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from components.data.loader import BucketLoader, LoaderConfig
    from components.data.shard import shard
    from components.data.shard_manifest import iter_samples
    from components.data.video_io import decode_video

    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        root = Path(tmp)
        annotations = write_dataset(root / "clips", bench_specs(args.clips))
        overrides = [*SHARD_OVERRIDES, f"shard.workers={args.workers}"]
        started = time.perf_counter()
        result = shard(annotations, root / "shards", overrides=overrides)
        stage_seconds = time.perf_counter() - started
        tars = sorted((root / "shards" / "shards").glob("*.tar"))
        shard_bytes = sum(p.stat().st_size for p in tars)

        started = time.perf_counter()
        for path in tars:
            shutil.copyfile(path, root / f"copy-{path.name}")
        copy_seconds = time.perf_counter() - started

        started = time.perf_counter()
        decoded = 0
        for path in tars:
            with open(path, "rb") as stream:
                for sample in iter_samples(stream):
                    decode_video(sample["mp4"])
                    decoded += 1
        decode_seconds = time.perf_counter() - started

        loader_rates = {}
        for workers in (0, 2):
            config = LoaderConfig(batch_tokens=1024, max_batch_size=4, num_workers=workers, remainder="drop")
            loader = BucketLoader(root / "shards", config, rank=0, world_size=1)
            started = time.perf_counter()
            samples = sum(len(batch["key"]) for batch in loader)
            loader_rates[f"loader_workers_{workers}_samples_per_s"] = round(samples / (time.perf_counter() - started), 1)
            loader_rates[f"loader_workers_{workers}_samples"] = samples

    print(json.dumps({
        "clips": args.clips, "samples": result["samples"], "unfit": result["unfit"], "shards": len(tars),
        "shard_mb": round(shard_bytes / 1e6, 2), "psnr": result["psnr"],
        "shard_encode_write_seconds": result["seconds"], "shard_stage_seconds_with_tracking": round(stage_seconds, 2),
        "shard_clips_per_s": round(result["samples"] / result["seconds"], 1),
        "shard_mb_per_s": round(shard_bytes / 1e6 / result["seconds"], 2),
        "plain_copy_mb_per_s": round(shard_bytes / 1e6 / copy_seconds, 1),
        "decode_only_samples_per_s": round(decoded / decode_seconds, 1),
        **loader_rates,
    }, indent=2))


if __name__ == "__main__":
    main()
