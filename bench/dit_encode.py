"""The latent precompute (`t2v dit encode`) against the VAE encode alone on the same clips (goal: <= 1.2x).

    python bench/dit_encode.py [--clips 40] [--rounds 3] [--threads N] [--preset tiny] [--set encode.batch_size=8]

Synthesises captioned clips (`t2v data synth`, no defects), shards them with the data preset, saves a
seeded VAE of the VAE preset, then:
1. runs `encode_latents` (cached mode) start to end: reading and cutting clips, the VAE, the text encoder,
   the text store, writing and uploading shards, manifests; wall seconds and samples per second;
2. times the VAE alone on the very batches the stage encodes (same clips, same buckets, same batch size,
   pixels already in memory).
Both alternate for `--rounds` rounds (a fresh output folder each time). The ratio (1) / (2), in wall and
in CPU seconds, is what the stage costs on top of the VAE; round 0 also pays the one-off imports of a
fresh process (transformers, mlflow). Also prints the stage's own VAE seconds (with the reader, text and
writer threads beside it), bytes per sample, the text store's statistics and the storage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--preset", default="tiny", help="DiT preset (its encode group); the VAE and data use tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a 2-core machine loaded by other jobs, 2 threads "
                             "wait on each other at every parallel region: 1 is 5x faster there")
    args = parser.parse_args()
    os.environ.setdefault("T2V_HOME", tempfile.mkdtemp(prefix="t2v-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from components.data.loader import BucketLoader, LoaderConfig
    from components.data.shard import shard
    from components.data.synth import synthesize
    from components.dit.config import load_dit_config
    from components.dit.encode import encode_latents
    from components.dit.latent_layout import cut_to_bucket
    from components.vae import load_vae
    from components.vae.config import load_vae_config
    from components.vae.model import CausalVAE
    from components.vae.official import save_vae

    with tempfile.TemporaryDirectory(prefix="t2v-bench-") as tmp:
        root = Path(tmp)
        synthesize(str(root / "clips"), args.clips, seed=3, overrides=["synth.bad_fraction=0"])
        shard(str(root / "clips" / "annotations.json"), root / "shards")
        torch.manual_seed(0)
        save_vae(root / "vae", CausalVAE(load_vae_config("tiny").model).eval())

        # The same clips in the same buckets, batched as the stage batches them, read once into memory: the
        # online layout of the same settings points at the source tars the stage reads.
        encode_latents(root / "shards", root / "vae", root / "online", preset=args.preset,
                       overrides=[*args.overrides, "encode.mode=online"])
        online = json.loads((root / "online" / "manifest.json").read_text())
        config = load_dit_config(args.preset, args.overrides).encode
        batches: list[torch.Tensor] = []
        for folder in [root / "online", *([root / "online" / "val"] if online["val"] else [])]:
            pending: dict[tuple, list[torch.Tensor]] = {}
            reader = BucketLoader(folder / "manifest.json", LoaderConfig(batch_tokens=1, max_batch_size=1),
                                  rank=0, world_size=1, transform=cut_to_bucket)
            for batch in reader:
                pending.setdefault(batch["bucket"], []).append(batch["video"][0])
            for videos in pending.values():
                for start in range(0, len(videos), config.batch_size):
                    batches.append(torch.stack(videos[start : start + config.batch_size]))
        samples = sum(len(b) for b in batches)
        vae = load_vae(root / "vae")

        # Alternate the two, so a change in the machine's load hits both alike; wall and CPU seconds (this
        # process and its finished children: the loader's reader processes).
        rounds = []
        for number in range(args.rounds):
            with _clock() as stage_time:
                result = encode_latents(root / "shards", root / "vae", root / f"latents-{number}", preset=args.preset,
                                        overrides=args.overrides)
            with _clock() as vae_time, torch.inference_mode():
                for video in batches:
                    vae.encode(video)
            rounds.append({"stage": stage_time, "vae_alone": vae_time, "stage_vae": result["metrics"]["vae_seconds"]})
        manifest = json.loads((root / "latents-0" / "manifest.json").read_text())
        assert result["num_samples"] + (manifest["val"] or {}).get("num_samples", 0) == samples

    def ratio(kind: str, rows: list[dict]) -> float:
        return round(statistics.median(r["stage"][kind] / r["vae_alone"][kind] for r in rows), 3)

    later = rounds[1:] or rounds  # round 0 also pays one-off imports (transformers, mlflow) and warm-up
    print(json.dumps({
        "clips": args.clips, "latent_samples": samples, "preset": args.preset, "overrides": args.overrides,
        "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "rounds": [{k: (v if isinstance(v, float) else {m: round(x, 2) for m, x in v.items()}) for k, v in r.items()}
                   for r in rounds],
        "stage_samples_per_wall_s": round(samples / statistics.median(r["stage"]["wall"] for r in later), 2),
        "ratio_wall_after_round_0": ratio("wall", later), "ratio_cpu_after_round_0": ratio("cpu", later),
        "ratio_wall_round_0": ratio("wall", rounds[:1]), "ratio_cpu_round_0": ratio("cpu", rounds[:1]),
        "bytes_per_sample": manifest["bytes_per_sample"], "text_store": {
            k: manifest["text_store"][k] for k in ("entries", "tokens_mean", "tokens_max", "bytes_per_entry")},
        "storage_error": manifest["latent"]["storage_error"],
    }, indent=2))


@contextlib.contextmanager
def _clock():
    """{"wall", "cpu"} seconds of the block, filled in when it ends."""
    times: dict[str, float] = {}
    wall, cpu = time.perf_counter(), _cpu()
    yield times
    times.update(wall=time.perf_counter() - wall, cpu=_cpu() - cpu)


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
