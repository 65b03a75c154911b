"""Training step time and tokens/s of the DiT trainer's own step (`components.dit.train_step.train_step`).

One step = posterior sample, caption dropout, the §3.1 loss (forward), backward, gradient clipping, AdamW,
EMA update: exactly what `t2v dit train` runs, on the model, optimizer and EMA its `build` makes (one
process). Inputs are synthetic latents and caption embeddings of the case's size (64 text tokens).

    PYTHONPATH=. python bench/dit_train.py                        # every case, CPU or the accelerator found
    PYTHONPATH=. python bench/dit_train.py --cases slice192 --threads 2

Cases: `tiny*` (the tiny preset at its largest bucket and its images), and the 2-layer slice of v1.2 at full
width (hidden 2304, text width 4096; as bench/dit_reference.py builds it) at 192 tokens (an image at
192x256 px) and 2,400 tokens (29x240x320 px, gradient checkpointing per block as the v1.2 preset). Each
case: `--warmup` steps, then the median of `--steps` timed steps (wall clock, synchronised on accelerators).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core import runtime  # noqa: E402
from components.core.distributed import Context  # noqa: E402
from components.dit.config import load_dit_config  # noqa: E402
from components.dit.train import build  # noqa: E402
from components.dit.train_step import Conditioning, train_step  # noqa: E402

TEXT_TOKENS = 64
# name: (preset, overrides, batch, latent frames, latent height, latent width)
CASES = {
    "tiny17x64x64": ("tiny", [], 2, 5, 8, 8),  # the tiny preset's largest bucket: 2 x 80 tokens
    "tiny1x32x32": ("tiny", [], 8, 1, 4, 4),  # its smallest images: 8 x 4 tokens
    "slice192": ("v1.2", ["model.num_layers=2", "model.gradient_checkpointing=false"], 1, 1, 24, 32),
    "slice2400": ("v1.2", ["model.num_layers=2"], 1, 8, 30, 40),  # checkpointing per block, as the preset
}


def run_case(name: str, steps: int, warmup: int, device: str) -> dict:
    preset, overrides, batch, frames, height, width = CASES[name]
    config = load_dit_config(preset, [*overrides, f"train.device={device}"])
    ctx = Context(0, 1, 0, runtime.select_device(device))
    stage = config.train.stage(1)
    parts = build(config, stage, 1, ctx, None)
    generator = torch.Generator().manual_seed(1)
    shape = (batch, config.model.in_channels, frames, height, width)
    data = {"latent_mean": torch.randn(shape, generator=generator), "latent_logvar": torch.full(shape, -4.0),
            "text": torch.randn(batch, TEXT_TOKENS, config.model.caption_channels, generator=generator),
            "text_mask": torch.ones(batch, TEXT_TOKENS, dtype=torch.int64)}
    empty = Conditioning(0.18215, torch.zeros(1, config.model.caption_channels), torch.ones(1, dtype=torch.int64))
    dtype = runtime.autocast_dtype(ctx.device, config.train.precision)
    autocast = lambda: runtime.autocast(ctx.device, dtype)  # noqa: E731
    tokens = batch * frames * (height // config.model.patch_size) * (width // config.model.patch_size)
    times, losses = [], []
    for step in range(warmup + steps):
        _sync(ctx.device)
        started = time.perf_counter()
        result = train_step(parts, data, empty, step, autocast)
        _sync(ctx.device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
        losses.append(result.loss)
    median = statistics.median(times)
    parameters = sum(p.numel() for p in parts.model.parameters())
    return {"case": name, "device": str(ctx.device), "precision": str(dtype or torch.float32),
            "threads": torch.get_num_threads(), "parameters": parameters, "batch": batch, "tokens_per_step": tokens,
            "step_s_median": round(median, 4), "step_s_all": [round(t, 4) for t in times],
            "tokens_per_s": round(tokens / median, 1), "losses": [round(v, 4) for v in losses]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.cases:
        print(json.dumps(run_case(name, args.steps, args.warmup, args.device)), flush=True)


if __name__ == "__main__":
    main()
