"""What a VAE must beat on the synthetic shapes clips: PSNR of codecs that learn nothing.

The demo's `vae-eval` protocol on the frames themselves (first 9 frames, short side resized to 64 with
area interpolation, centre crop): a Gaussian blur of the frames (a VAE that keeps every colour and place
but loses sharpness), and a block-mean codec with the tiny VAE's compression: the mean colour of each
8x8 block (3 numbers where the tiny VAE keeps 4 latent channels), frame 0 alone and then one mean over each
4 frames (its causal 4x temporal compression), resized back up. A trained VAE below these numbers loses
colour or position, not detail.

    python bench/vae_baselines.py --clips 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.metrics import psnr  # noqa: E402
from components.data import synth  # noqa: E402
from components.data.config import load_data_config  # noqa: E402

SIZE, FRAMES, SPATIAL, TEMPORAL = 64, 9, 8, 4


def clips(count: int, seed: int) -> list[np.ndarray]:
    """(9, 64, 64, 3) float32 frames of the first `count` shapes clips with at least 9 frames."""
    config = load_data_config("tiny").synth
    out = []
    for index in range(count):
        plan = synth.plan_clip(index, seed, "shapes", config, None)
        frames = np.stack(list(synth.render_frames(plan, "shapes")))[:FRAMES]
        if len(frames) < FRAMES:
            continue
        height, width = frames.shape[1:3]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        out.append(np.stack([cv2.resize(f[top:top + side, left:left + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                             for f in frames]).astype(np.float32))
    return out


def clip_psnr(reconstruction: np.ndarray, original: np.ndarray) -> float:
    """As `vae-eval` scores a clip: PSNR per frame (components.core.metrics), then the mean over frames."""
    def frames(video: np.ndarray) -> torch.Tensor:  # (T, H, W, 3) in [0, 255] -> (T, 3, H, W) in [0, 1]
        return torch.from_numpy(np.clip(video, 0, 255) / 255.0).permute(0, 3, 1, 2)
    return float(psnr(frames(reconstruction), frames(original)).mean())


def block_mean(frames: np.ndarray, interpolation: int) -> np.ndarray:
    small = np.stack([cv2.resize(f, (SIZE // SPATIAL,) * 2, interpolation=cv2.INTER_AREA) for f in frames])
    groups = [small[:1]] + [small[t:t + TEMPORAL].mean(0, keepdims=True).repeat(TEMPORAL, 0)
                            for t in range(1, FRAMES, TEMPORAL)]
    return np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=interpolation) for f in np.concatenate(groups)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = clips(args.clips, args.seed)
    print(f"{len(data)} clips, {FRAMES}x{SIZE}x{SIZE}")
    for sigma in (1.0, 2.0, 4.0):
        scores = [clip_psnr(np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in c]), c) for c in data]
        print(f"gaussian blur sigma {sigma:.0f} px: {np.mean(scores):.2f} dB")
    for name, interpolation in (("nearest", cv2.INTER_NEAREST), ("bilinear", cv2.INTER_LINEAR),
                                ("bicubic", cv2.INTER_CUBIC)):
        scores = [clip_psnr(block_mean(c, interpolation), c) for c in data]
        print(f"block mean {SPATIAL}x{SPATIAL}, {TEMPORAL} frames, {name} up: {np.mean(scores):.2f} dB")


if __name__ == "__main__":
    main()
