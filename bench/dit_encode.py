"""The latent precompute (`t2v dit encode`) against the VAE encode alone on the same clips (goal: <= 1.2x).

    python bench/dit_encode.py [--clips 40] [--preset tiny] [--set encode.batch_size=8] [--device cpu]

Synthesises captioned clips (`t2v data synth`, no defects), shards them with the data preset, saves a
seeded VAE of the VAE preset, then:
1. runs `encode_latents` (cached mode) start to end: reading and cutting clips, the VAE, the text encoder,
   the text store, writing and uploading shards, manifests; wall seconds and samples per second;
2. times the VAE alone on the very batches the stage encoded (same clips, same buckets, same batch size,
   pixels already in memory), best of `--rounds`.
The ratio (1) / (2) is what the stage costs on top of the VAE. Also prints the run's own VAE seconds
(inside the stage, with the reader, text and writer threads running beside it) and its bytes per sample.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--preset", default="tiny", help="DiT preset (its encode group); the VAE and data use tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("T2V_HOME", tempfile.mkdtemp(prefix="t2v-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import torch

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

        started = time.perf_counter()
        result = encode_latents(root / "shards", root / "vae", root / "latents", preset=args.preset,
                                overrides=args.overrides)
        stage_seconds = time.perf_counter() - started
        manifest = json.loads((root / "latents" / "manifest.json").read_text())
        samples = manifest["num_samples"] + (manifest["val"] or {}).get("num_samples", 0)

        # The same clips in the same buckets, batched as the stage batches them, read once into memory: the
        # online layout of the same settings points at the source tars the stage read.
        encode_latents(root / "shards", root / "vae", root / "online", preset=args.preset,
                       overrides=[*args.overrides, "encode.mode=online"])
        config = load_dit_config(args.preset, args.overrides).encode
        batches: list[torch.Tensor] = []
        for folder in [root / "online", *([root / "online" / "val"] if manifest["val"] else [])]:
            pending: dict[tuple, list[torch.Tensor]] = {}
            reader = BucketLoader(folder / "manifest.json", LoaderConfig(batch_tokens=1, max_batch_size=1),
                                  rank=0, world_size=1, transform=cut_to_bucket)
            for batch in reader:
                pending.setdefault(batch["bucket"], []).append(batch["video"][0])
            for videos in pending.values():
                for start in range(0, len(videos), config.batch_size):
                    batches.append(torch.stack(videos[start : start + config.batch_size]))
        assert sum(len(b) for b in batches) == samples, (sum(len(b) for b in batches), samples)
        vae = load_vae(root / "vae")
        vae_rounds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            with torch.inference_mode():
                for video in batches:
                    vae.encode(video)
            vae_rounds.append(time.perf_counter() - started)
        vae_seconds = min(vae_rounds)

    print(json.dumps({
        "clips": args.clips, "latent_samples": samples, "preset": args.preset, "overrides": args.overrides,
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": round(stage_seconds, 2), "stage_samples_per_s": round(samples / stage_seconds, 2),
        "stage_vae_seconds": manifest["vae_seconds"],
        "vae_alone_seconds": round(vae_seconds, 2), "vae_alone_rounds": [round(r, 2) for r in vae_rounds],
        "ratio_stage_to_vae_alone": round(stage_seconds / vae_seconds, 3),
        "bytes_per_sample": manifest["bytes_per_sample"], "text_store": {
            k: manifest["text_store"][k] for k in ("entries", "tokens_mean", "tokens_max", "bytes_per_entry")},
        "storage_error": manifest["latent"]["storage_error"], "mlflow_run_id": result["mlflow_run_id"],
    }, indent=2))


if __name__ == "__main__":
    main()
