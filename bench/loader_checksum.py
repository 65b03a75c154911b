"""What checking each shard's sha256 while streaming costs the loader (goal: at most 5 % of throughput).

    python bench/loader_checksum.py [--clips 48] [--rounds 3]

Shards the bench clips of `bench/shard_speed.py` once, then runs whole loader epochs (0 workers, so the
two settings share one core the same way) alternately with `loader.verify_shards` on and off, and reports
the median samples per second of each, by wall clock and by this process's CPU time (the one to trust
on a machine shared with other jobs, whose load moves wall-clock rates by tens of percent from round to
round), and the slowdowns. Alone, hashing the same shard bytes (sha256 over every tar, read from disk)
gives the floor of that cost. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.shard_speed import SHARD_OVERRIDES, bench_specs  # noqa: E402
from tests.data.clips import write_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("T2V_HOME", tempfile.mkdtemp(prefix="t2v-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from components.data.loader import BucketLoader, LoaderConfig
    from components.data.shard import shard

    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        root = Path(tmp)
        annotations = write_dataset(root / "clips", bench_specs(args.clips))
        result = shard(annotations, root / "shards", overrides=SHARD_OVERRIDES)
        tars = sorted((root / "shards" / "shards").glob("*.tar"))
        shard_bytes = sum(p.stat().st_size for p in tars)

        started = time.perf_counter()
        for path in tars:
            hashlib.sha256(path.read_bytes()).hexdigest()
        hash_seconds = time.perf_counter() - started

        wall: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for verify in (False, True):
                config = LoaderConfig(batch_tokens=1024, max_batch_size=4, remainder="drop", verify_shards=verify)
                loader = BucketLoader(root / "shards", config, rank=0, world_size=1)
                started, started_cpu = time.perf_counter(), time.process_time()
                samples = sum(len(batch["key"]) for batch in loader)
                wall[verify].append(samples / (time.perf_counter() - started))
                cpu[verify].append(samples / (time.process_time() - started_cpu))

    def summary(rates: dict[bool, list[float]]) -> dict[str, float]:
        checked, unchecked = statistics.median(rates[True]), statistics.median(rates[False])
        return {"unchecked": round(unchecked, 2), "checked": round(checked, 2),
                "slowdown_percent": round(100 * (unchecked - checked) / unchecked, 2)}

    epoch_seconds = samples / statistics.median(wall[False])
    print(json.dumps({
        "clips": args.clips, "samples": result["samples"], "shards": len(tars), "shard_mb": round(shard_bytes / 1e6, 2),
        "samples_per_wall_second": summary(wall), "samples_per_cpu_second": summary(cpu),
        "sha256_mb_per_s": round(shard_bytes / 1e6 / hash_seconds, 1),
        "hashing_share_of_an_epoch_percent": round(100 * hash_seconds / epoch_seconds, 3),
        "rounds_wall": {"checked": [round(r, 2) for r in wall[True]], "unchecked": [round(r, 2) for r in wall[False]]},
    }, indent=2))


if __name__ == "__main__":
    main()
