"""Speed of one VAE generator step, one discriminator step (reusing the generator step's reconstruction)
and of evaluation encode/decode (posterior mean, no grad) for a preset, on random clips.

    PYTHONPATH=. python bench/vae_train_eval.py --preset tiny --bucket 9x64x64
    PYTHONPATH=. python bench/vae_train_eval.py --preset v1.2 --device cuda          # 25x256x256, bf16 autocast

Recorded results are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from components.core import runtime
from components.vae.config import load_vae_config
from components.vae.discriminator import PatchDiscriminator3D
from components.vae.losses import VAELoss
from components.vae.model import CausalVAE


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--bucket", default=None, help="FxHxW (default: the preset's data.bucket)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eval-frames", type=int, default=None, help="default: the preset's eval.num_frames")
    args = parser.parse_args()

    config = load_vae_config(args.preset)
    device = runtime.select_device(args.device)
    dtype = runtime.autocast_dtype(device, config.train.precision)
    frames, height, width = map(int, (args.bucket or config.data.bucket).split("x"))
    torch.manual_seed(0)
    model = CausalVAE(config.model).to(device)
    disc = PatchDiscriminator3D(3, config.train.discriminator.base_channels, config.train.discriminator.num_layers).to(device)
    loss = VAELoss(config.train.loss).to(device)
    gen_opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    disc_opt = torch.optim.Adam(disc.parameters(), lr=config.train.disc_lr)
    last_layer = dict(model.named_parameters())["decoder.conv_out.conv.weight"]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    video = torch.rand(config.data.batch_size, 3, frames, height, width, device=device) * 2 - 1

    def generator_step() -> torch.Tensor:
        with autocast():
            posterior = model.encode(video)
            recon = model.decode(posterior.sample())
            terms = loss.generator(recon, video, posterior, disc, last_layer, use_gan=True)
        gen_opt.zero_grad(set_to_none=True)
        terms["gen"].backward()
        gen_opt.step()
        return recon.detach()

    def discriminator_step(recon: torch.Tensor) -> None:
        with autocast():
            terms = loss.discriminator(disc, video, recon)
        disc_opt.zero_grad(set_to_none=True)
        terms["disc"].backward()
        disc_opt.step()

    recon = generator_step()  # warm-up
    discriminator_step(recon)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen_times, disc_times = [], []
    for _ in range(args.steps):
        start = _now(device)
        recon = generator_step()
        middle = _now(device)
        discriminator_step(recon)
        gen_times.append(middle - start)
        disc_times.append(_now(device) - middle)
    train_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    eval_frames = args.eval_frames or config.eval.num_frames
    clip = torch.rand(1, 3, eval_frames, config.eval.resolution, config.eval.resolution, device=device) * 2 - 1
    model.eval()
    encode_times, decode_times = [], []
    with torch.no_grad():
        for _ in range(args.steps + 1):
            start = _now(device)
            latents = model.encode(clip).mode()
            middle = _now(device)
            model.decode(latents)
            encode_times.append(middle - start)
            decode_times.append(_now(device) - middle)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(json.dumps({
        "preset": args.preset, "device": str(device), "autocast": str(dtype), "train_clip": [frames, height, width],
        "batch_size": config.data.batch_size, "generator_step_s": median(gen_times),
        "discriminator_step_s": median(disc_times), "train_peak_gib": train_peak,
        "eval_clip": [eval_frames, config.eval.resolution, config.eval.resolution],
        "encode_s": median(encode_times[1:]), "decode_s": median(decode_times[1:]),
    }, indent=2))


if __name__ == "__main__":
    main()
