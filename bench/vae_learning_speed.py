"""How fast the tiny VAE learns the shapes clips, against a plain conv autoencoder in the same harness.

Both train on image crops (1x32x32 random frames of synthetic shapes clips; the causal VAE's first-frame
path, what the demo's phase 1 trains) with Adam and MSE on the posterior mean (no sampling, no KL), and
are scored on the first 9 frames of held-out clips at full size, PSNR per frame as `vae-eval`. The plain
autoencoder is the yardstick: stride-2 convs with GroupNorm + SiLU, the tiny VAE's 8x spatial compression
and 4 latent channels, no resnet stacks and no mid block. Reported: held-out PSNR and seconds at six points of the run.

    python bench/vae_learning_speed.py --arch plain --width 16 --steps 1200
    python bench/vae_learning_speed.py --arch vae --steps 1200          # the tiny preset's layout
    python bench/vae_learning_speed.py --arch vae --set mid_attention=false --set hidden_size=32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.metrics import psnr  # noqa: E402
from components.data import synth  # noqa: E402
from components.data.config import load_data_config  # noqa: E402
from components.vae.config import load_vae_config  # noqa: E402
from components.vae.model import CausalVAE  # noqa: E402

CROP, HELD_OUT, EVAL_FRAMES = 32, 6, 9


def shape_clips(count: int) -> list[torch.Tensor]:
    """(T, 3, H, W) in [-1, 1] for the first `count` clips of `t2v data synth` (seed 0, tiny preset)."""
    config = load_data_config("tiny").synth
    clips = []
    for index in range(count):
        frames = np.stack(list(synth.render_frames(synth.plan_clip(index, 0, "shapes", config, None), "shapes")))
        clips.append(torch.from_numpy(frames[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1)
    return clips


def plain_autoencoder(width: int) -> nn.Module:
    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout, affine=False), nn.SiLU()]

    up = [nn.Upsample(scale_factor=2)]
    return nn.Sequential(
        *block(3, width), *block(width, width, 2), *block(width, 2 * width, 2), *block(2 * width, 2 * width, 2),
        nn.Conv2d(2 * width, 4, 3, padding=1),  # the latent: 4 channels at 1/8 size
        *block(4, 2 * width), *up, *block(2 * width, 2 * width), *up, *block(2 * width, width), *up,
        *block(width, width), nn.Conv2d(width, 3, 3, padding=1))


class ImageVAE(nn.Module):
    """The causal VAE on single frames, through its posterior mean."""

    def __init__(self, overrides: list[str]):
        super().__init__()
        self.vae = CausalVAE(load_vae_config("tiny", [f"model.{o}" for o in overrides]).model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W)
        return self.vae.decode(self.vae.encode(images[:, :, None]).mode())[:, :, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("plain", "vae"), default="vae")
    parser.add_argument("--width", type=int, default=16, help="plain: channels of the first level")
    parser.add_argument("--set", action="append", default=[], help="vae: model key=value of the tiny preset")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    clips = shape_clips(args.clips)
    train, held = clips[:-HELD_OUT], clips[-HELD_OUT:]
    model = plain_autoencoder(args.width) if args.arch == "plain" else ImageVAE(args.set)
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(train)} training clips")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def crop() -> torch.Tensor:
        clip = train[rng.integers(len(train))]
        height, width = clip.shape[2:]
        top, left = rng.integers(0, height - CROP + 1), rng.integers(0, width - CROP + 1)
        return clip[rng.integers(len(clip)), :, top:top + CROP, left:left + CROP]

    def held_out_psnr() -> float:
        scores = []
        with torch.no_grad():
            for clip in held:
                frames = clip[:EVAL_FRAMES]
                side = min(frames.shape[2:]) // 8 * 8
                frames = frames[:, :, :side, :side]
                scores.append(float(psnr((model(frames).clamp(-1, 1) + 1) / 2, (frames + 1) / 2).mean()))
        return float(np.mean(scores))

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = torch.stack([crop() for _ in range(args.batch)])
        loss = (model(batch) - batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(args.steps // 6, 1) == 0:
            print(f"step {step}: held-out {held_out_psnr():.2f} dB, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
