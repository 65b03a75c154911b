"""Encode/decode time and peak memory of the v1.2 CausalVAE on CPU (random init, fp32, posterior mean).

Each phase runs in a fresh subprocess so its peak RSS (`ru_maxrss`, which includes the ~0.96 GB of
weights) is its own. Reference measurements on this kind of machine (2 threads):
9x128x128 encode 7.3 s / decode 27.4 s; 33x256x256 encode 90 s at 7.4 GiB, decode 371 s at 11.0 GiB.

    python bench/vae_speed.py                    # 1x3x9x128x128
    python bench/vae_speed.py --size large       # 1x3x33x256x256 (minutes)
    python bench/vae_speed.py --mode plain       # without the no-grad memory optimisations (same outputs)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": (9, 128, 128), "large": (33, 256, 256)}
REFERENCE = {"small": {"encode_s": 7.3, "decode_s": 27.4}, "large": {"encode_s": 90.0, "encode_peak_gib": 7.4,
                                                                     "decode_s": 371.0, "decode_peak_gib": 11.0}}


def run_phase(phase: str, size: str, threads: int, preset: str, mode: str, save: str | None) -> dict:
    """Run one phase in this process (called in a fresh subprocess by `main`)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from components.vae.config import load_vae_config
    from components.vae.model import CausalVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_vae_config(preset).model
    model = CausalVAE(config).eval()
    frames, height, width = SIZES[size]
    generator = torch.Generator().manual_seed(1)
    if phase == "encode":
        inputs = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    else:
        latent_shape = (1, config.latent_channels, (frames - 1) // config.temporal_compression + 1,
                        height // config.spatial_compression, width // config.spatial_compression)
        inputs = torch.randn(latent_shape, generator=generator)
    if mode == "plain":
        # Autograd enabled but nothing requires grad: the model takes its plain (autograd-safe) path.
        model.requires_grad_(False)
        context = torch.enable_grad()
    else:
        context = torch.inference_mode()
    with context:
        start, cpu_start = time.perf_counter(), time.process_time()
        output = model.encode(inputs).mean if phase == "encode" else model.decode(inputs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if save:
        torch.save(output.detach().clone(), save)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # cpu_seconds (all threads) is robust to other processes sharing the cores; seconds is wall time.
    return {"phase": phase, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_rss_gib": round(peak_kib / 2**20, 2),
            "output_shape": list(output.shape), "output_abs_mean": float(output.abs().mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="v1.2")
    parser.add_argument("--mode", choices=["fast", "plain"], default="fast")
    parser.add_argument("--save-outputs", default=None, help="folder to save each phase's output tensor (.pt)")
    parser.add_argument("--phase", choices=["encode", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.size, args.threads, args.preset, args.mode, args.save)))
        return 0
    results = {"size": args.size, "threads": args.threads, "preset": args.preset, "mode": args.mode,
               "reference": REFERENCE[args.size]}
    for phase in ("encode", "decode"):
        command = [sys.executable, __file__, "--phase", phase, "--size", args.size, "--threads", str(args.threads),
                   "--preset", args.preset, "--mode", args.mode]
        if args.save_outputs:
            Path(args.save_outputs).mkdir(parents=True, exist_ok=True)
            command += ["--save", str(Path(args.save_outputs) / f"{phase}-{args.size}-{args.mode}.pt")]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results[phase] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
