"""Text-to-video sampling speed: seconds per clip for `tiny`, and seconds per denoising step of the v1.2-width
slice side by side with the reference's pipeline (Open-Sora Plan v1.2.0, imported from a checkout, never copied).

    python bench/dit_sample.py tiny                                   # ~1 min on 2 cores
    python bench/dit_sample.py --reference /work/ref slice            # ~6 min at 9,600 tokens, 2 steps
    python bench/dit_sample.py full                                   # a GPU: all of v1.2, 100 steps, bf16

`tiny`: `t2v dit sample`'s own function (`write_samples`) on a seeded tiny stage folder (the test helper
`tests/dit/fixtures_models.py`: tiny DiT, VAE and text encoder, conditioning.json), the demo's 17x64x64
clips, Euler-ancestral, with and without guidance. Reported: loading, generating (text encoding, the
denoising loop, VAE decode) per clip, the VAE decode in it, text encoding and denoising per step
(generating less decoding), writing the mp4s and samples.json, and the whole call per clip.

`slice`: the 2-layer slice of v1.2 at full width (hidden 2304, text width 4096) that `bench/dit_reference.py`
builds, both implementations holding the reference's random init, at 29x480x640 pixels = 8x60x80 latents =
9,600 tokens per sample, 64 text tokens (random embeddings: the mT5-XXL encoder is not on this machine),
fp32, `--threads` threads. Ours: `components.dit.denoise.denoise` (what `Sampler.generate` runs). Reference:
`OpenSoraPipeline.__call__` with the same transformer weights, `EulerAncestralDiscreteScheduler()`,
`prompt_embeds` given and `output_type="latent"` (its VAE and text encoder are not part of a step). Guidance
4.5 runs the negative and positive captions as a batch of two in both; guidance 1 a batch of one. Each
(implementation, guidance) runs in a fresh subprocess, ours and the reference's back to back; seconds per
step = the whole loop / steps (at 9,600 tokens the first step's one-off costs are under 1 %). Both start
from the same noise (seed 0 on the CPU), so their final latents are compared too.

`full` (for an accelerator): all 32 blocks of v1.2 (random init) at 29x480x640, 100 Euler-ancestral steps
with guidance 7.5, bf16; seconds per step, achieved TFLOP/s (matmul FLOPs as `dit_reference.model_flops`)
and peak memory. Smoke test on a CPU: `full --device cpu --dtype float32 --layers 1 --latent 2 8 8 --steps 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dit_reference import (  # noqa: E402
    import_reference,
    make_inputs,
    model_flops,
    prepare,
    reference_config,
    slice_config,
)

PIPELINE_MODULE = "opensora.sample.pipeline_opensora"
IMPLEMENTATIONS = ("ours", "reference")
SLICE_LATENT = (8, 60, 80)  # 29x480x640 pixels through the 4x8x8 VAE -> 8 x 30 x 40 = 9,600 tokens
GUIDANCES = (1.0, 4.5)
TINY_PROMPTS = ["a red circle moving left on a blue background", "a green square moving up on a black background",
                "a yellow triangle moving right on a white background", "a cyan star moving down on a grey background"]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def bench_tiny(args) -> dict:
    import torch

    from components.dit.sample import Sampler
    from components.dit.sample_videos import write_samples
    from tests.dit.fixtures_models import make_trained_folder

    torch.set_num_threads(args.threads)
    decoding = {"seconds": 0.0}
    decode = Sampler.decode

    def timed_decode(self, *decode_args, **kwargs):  # the VAE decode inside generate, timed where it runs
        started = time.perf_counter()
        try:
            return decode(self, *decode_args, **kwargs)
        finally:
            decoding["seconds"] += time.perf_counter() - started

    Sampler.decode = timed_decode
    clips = len(TINY_PROMPTS)
    results: dict = {"threads": args.threads, "clip": "17x64x64", "steps": args.steps, "clips": clips,
                     "load_average_before": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        stage = make_trained_folder(Path(tmp) / "run")
        for guidance in GUIDANCES:
            decoding["seconds"] = 0.0
            started = time.perf_counter()
            record = write_samples(str(stage), TINY_PROMPTS, str(Path(tmp) / f"out-{guidance}"), frames=17, height=64,
                                   width=64, steps=args.steps, guidance=guidance, device="cpu")
            total = time.perf_counter() - started
            seconds = record["seconds"]
            results[f"guidance_{guidance}"] = {
                "load_s": seconds["load"], "generate_per_clip_s": seconds["per_clip"],
                "decode_per_clip_s": round(decoding["seconds"] / clips, 3),
                "text_and_denoise_per_step_s": round((seconds["generate"] - decoding["seconds"]) / clips / args.steps, 4),
                "write_and_record_s": round(total - seconds["load"] - seconds["generate"], 3),
                "whole_call_per_clip_s": round(total / clips, 3)}
    results["load_average_after"] = load_average()
    return results


class LatentOnlyVAE:
    """What the reference pipeline reads of its VAE when it returns latents: the compression factors."""

    vae_scale_factor = [4, 8, 8]


def run_slice(implementation: str, guidance: float, steps: int, reference: Path, workdir: Path, threads: int,
              latent: tuple[int, int, int] = SLICE_LATENT) -> dict:
    """Time the denoising loop of one implementation (called in a fresh subprocess by `bench_slice`)."""
    import importlib

    import torch
    from safetensors.torch import load_file, save_file

    from components.dit.official import build_with_weights

    torch.set_num_threads(threads)
    config = slice_config()
    state = {key: value.clone() for key, value in load_file(workdir / "diffusion_pytorch_model.safetensors").items()}
    inputs = make_inputs(*latent, config.caption_channels)
    positive, negative = inputs["text"][:1], inputs["text"][1:]  # (1, 64, 4096); the negative has 16 padded
    positive_mask, negative_mask = inputs["text_mask"][:1], inputs["text_mask"][1:]
    frames, height, width = 4 * (latent[0] - 1) + 1, 8 * latent[1], 8 * latent[2]
    if implementation == "ours":
        from components.dit.config import DiffusionConfig
        from components.dit.denoise import denoise, make_sampling_scheduler

        model = build_with_weights(config, state, "slice").eval()

        def loop() -> torch.Tensor:
            return denoise(model, positive, positive_mask, (4, *latent),
                           make_sampling_scheduler("euler_ancestral", DiffusionConfig()), steps,
                           [torch.Generator().manual_seed(0)], guidance, negative, negative_mask)
    else:
        from diffusers import EulerAncestralDiscreteScheduler

        model = import_reference(reference).from_config(reference_config(config))
        model.load_state_dict(state, strict=True)
        model.eval()
        pipeline_class = importlib.import_module(PIPELINE_MODULE).OpenSoraPipeline
        pipeline = pipeline_class(tokenizer=None, text_encoder=None, vae=LatentOnlyVAE(), transformer=model,
                                  scheduler=EulerAncestralDiscreteScheduler())
        pipeline.set_progress_bar_config(disable=True)

        def loop() -> torch.Tensor:
            with torch.inference_mode():
                return pipeline(prompt=None, negative_prompt=None, prompt_embeds=positive, prompt_attention_mask=positive_mask,
                                negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask,
                                num_frames=frames, height=height, width=width, num_inference_steps=steps,
                                guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                                output_type="latent", return_dict=False)[0]
    del state
    load_before = load_average()
    started = time.perf_counter()
    latents = loop()
    seconds = time.perf_counter() - started
    save_file({"latents": latents.contiguous()}, workdir / f"{implementation}-{guidance}.safetensors")
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    batch = 2 if guidance > 1 else 1
    flops = model_flops(config, tokens, positive.shape[1], backward=False, batch=batch)
    return {"seconds_per_step": round(seconds / steps, 2), "steps": steps, "batch_per_step": batch,
            "tokens_per_sample": tokens, "model_gflop_per_step": round(flops / 1e9, 1),
            "achieved_gflops": round(flops * steps / seconds / 1e9, 1), "latents_std": round(float(latents.std()), 4),
            "load_average_before": load_before}


def _latent_difference(workdir: Path, guidance: float) -> float:
    from safetensors.torch import load_file

    ours, theirs = (load_file(workdir / f"{impl}-{guidance}.safetensors")["latents"] for impl in IMPLEMENTATIONS)
    return float((ours.double() - theirs.double()).abs().max())


def bench_slice(args) -> dict:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dit-sample-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").is_file():
        prepare(args.reference, workdir)
    results: dict = {"threads": args.threads, "steps": args.steps, "latent": list(args.latent), "text_tokens": 64}
    for guidance in GUIDANCES:
        measured = {}
        for implementation in IMPLEMENTATIONS:
            command = [sys.executable, __file__, "--reference", str(args.reference), "--workdir", str(workdir),
                       "--threads", str(args.threads), "slice", "--steps", str(args.steps), "--guidance", str(guidance),
                       "--latent", *map(str, args.latent),
                       "--implementation", implementation]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise RuntimeError(f"{implementation} failed:\n{completed.stderr[-4000:]}")
            measured[implementation] = json.loads(completed.stdout.strip().splitlines()[-1])
        ours, theirs = measured["ours"]["seconds_per_step"], measured["reference"]["seconds_per_step"]
        results[f"guidance_{guidance}"] = {**measured, "time_ratio": round(ours / theirs, 3),
                                           "max_abs_diff_latents": _latent_difference(workdir, guidance)}
        print(json.dumps({f"guidance_{guidance}": results[f"guidance_{guidance}"]}), file=sys.stderr, flush=True)
    return results


def bench_full(args) -> dict:
    """The whole v1.2 DiT (or its first `--layers` blocks), random init, at `--latent`, on `--device` in
    `--dtype`: the denoising loop of `--steps` Euler-ancestral steps with guidance 7.5 (a batch of two)."""
    import torch

    from components.dit.config import DiffusionConfig, load_dit_config
    from components.dit.denoise import denoise, make_sampling_scheduler
    from components.dit.model import OpenSoraT2V

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    config = load_dit_config("v1.2", [f"model.num_layers={args.layers}"]).model
    torch.manual_seed(0)
    with torch.device(device):
        model = OpenSoraT2V(config).to(dtype).eval()
    inputs = make_inputs(*args.latent, config.caption_channels)
    text, mask = inputs["text"].to(device, dtype), inputs["text_mask"].to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def loop(steps: int) -> float:
        synchronize()
        started = time.perf_counter()
        denoise(model, text[:1], mask[:1], (4, *args.latent), make_sampling_scheduler("euler_ancestral", DiffusionConfig()),
                steps, [torch.Generator().manual_seed(0)], 7.5, text[1:], mask[1:])
        synchronize()
        return time.perf_counter() - started

    loop(1)  # warm-up: kernels picked, RoPE tables built
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = loop(args.steps)
    tokens = args.latent[0] * (args.latent[1] // 2) * (args.latent[2] // 2)
    flops = model_flops(config, tokens, text.shape[1], backward=False, batch=2) * args.steps
    result = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
              "dtype": args.dtype, "layers": args.layers, "latent": list(args.latent), "tokens_per_sample": tokens,
              "steps": args.steps, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / args.steps, 3),
              "achieved_tflops": round(flops / seconds / 1e12, 1)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="Open-Sora Plan v1.2.0 checkout (slice only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the slice's weights here")
    jobs = parser.add_subparsers(dest="job", required=True)
    tiny = jobs.add_parser("tiny")
    tiny.add_argument("--steps", type=int, default=50)
    slice_parser = jobs.add_parser("slice")
    slice_parser.add_argument("--steps", type=int, default=2)
    slice_parser.add_argument("--latent", type=int, nargs=3, default=list(SLICE_LATENT), metavar=("T", "H", "W"),
                              help="latent frames, rows, columns (default: 8 60 80 = 29x480x640)")
    slice_parser.add_argument("--guidance", type=float, help=argparse.SUPPRESS)
    slice_parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    full = jobs.add_parser("full", help="the whole v1.2 model on an accelerator (29x480x640, 100 steps, bf16)")
    full.add_argument("--device", default="cuda")
    full.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    full.add_argument("--layers", type=int, default=32)
    full.add_argument("--latent", type=int, nargs=3, default=list(SLICE_LATENT), metavar=("T", "H", "W"))
    full.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if args.job == "tiny":
        result = bench_tiny(args)
    elif args.job == "full":
        result = bench_full(args)
    else:
        if args.reference is None:
            parser.error("slice needs --reference")
        args.reference = args.reference.resolve()
        if args.implementation:
            result = run_slice(args.implementation, args.guidance, args.steps, args.reference, args.workdir, args.threads,
                               tuple(args.latent))
        else:
            result = bench_slice(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
