"""`t2v dit …` / `python -m components.dit …`: the diffusion transformer's commands."""

from __future__ import annotations

import argparse
import functools

from components.core.cli import add_config_args, add_tracking_args, run_command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.dit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser(
        "info", help="describe a DiT preset or model folder as JSON",
        epilog="example: t2v dit info --preset v1.2 --frames 93 --height 720 --width 1280")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name beside the component (tiny, v1.2) or a YAML path")
    source.add_argument("--dit", help="DiT folder (ours or official Open-Sora Plan v1.2), local or s3://")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one preset value, e.g. --set model.num_layers=2 (repeatable)")
    info.add_argument("--frames", type=int, default=29, help="clip frames, 1 + 4k (default: 29)")
    info.add_argument("--height", type=int, default=480, help="clip height in pixels (default: 480)")
    info.add_argument("--width", type=int, default=640, help="clip width in pixels (default: 640)")
    _add_sample(commands)

    encode = commands.add_parser(
        "encode", help="precompute VAE latents and caption embeddings of a shard set for DiT training",
        epilog="example: t2v dit encode --data runs/shards --vae runs/vae-phase2/model_ema --out runs/latents")
    encode.add_argument("--data", required=True, help="shard manifest of `t2v data shard` (folder or manifest.json)")
    encode.add_argument("--vae", required=True, help="VAE folder (ours or official v1.2), local or s3://")
    encode.add_argument("--out", required=True, help="output folder or s3:// URI (skipped when already finished)")
    add_config_args(encode, "encode.batch_size=4")
    add_tracking_args(encode)

    train = commands.add_parser(
        "train", help="train one stage of the DiT curriculum (stage k > 1 from stage k - 1's EMA weights)",
        epilog="example: t2v dit train --stage 2 --data latents/ --out dit-stage2/ --init dit-stage1/ "
               "--set train.stages.1.steps=100")
    train.add_argument("--stage", type=int, required=True, help="stage number of the preset's train.stages (1-5)")
    train.add_argument("--data", required=True,
                       help="latent folder (or its manifest.json) from `t2v dit encode`, local or s3://")
    train.add_argument("--out", required=True, help="output folder or s3:// URI (resumes when it holds checkpoints)")
    train.add_argument("--init", default=None, help="stage k > 1: stage k - 1's output folder")
    add_config_args(train, "train.stages.0.steps=100")
    add_tracking_args(train)
    return parser


def _add_sample(commands) -> None:
    from components.dit.denoise import SCHEDULERS
    from components.dit.sample import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS

    sample = commands.add_parser(
        "sample", help="generate one mp4 per prompt (and samples.json) with a trained or official DiT",
        epilog='example: t2v dit sample --dit models:/t2v-dit@stage5 --prompt "a red circle moving left on a '
               'blue background" --frames 17 --height 64 --width 64 --steps 50 --guidance 4.5 --out samples/')
    sample.add_argument("--dit", required=True,
                        help="our DiT stage folder, an official v1.2 folder (then --vae and --text-encoder too), "
                             "or a registered model, models:/t2v-dit@stage5; local or s3://")
    sample.add_argument("--prompt", dest="prompts", action="append", required=True, metavar="TEXT",
                        help="a caption to generate a clip for (repeatable)")
    sample.add_argument("--out", required=True, help="folder for the mp4s and samples.json, local or s3://")
    sample.add_argument("--frames", type=int, default=29, help="clip frames, 1 + 4k (default: 29)")
    sample.add_argument("--height", type=int, default=480, help="pixels, a multiple of 8 x the DiT patch (default: 480)")
    sample.add_argument("--width", type=int, default=640, help="pixels, a multiple of 8 x the DiT patch (default: 640)")
    sample.add_argument("--scheduler", choices=list(SCHEDULERS), default=DEFAULT_SCHEDULER,
                        help=f"sampler (default: {DEFAULT_SCHEDULER}, as the reference recommends)")
    sample.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps (default: {DEFAULT_STEPS})")
    sample.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale; <= 1 turns it off (default: {DEFAULT_GUIDANCE})")
    negative = sample.add_mutually_exclusive_group()
    negative.add_argument("--negative-prompt", default="", metavar="TEXT",
                          help="the caption guidance steers away from (default: the empty caption of training)")
    negative.add_argument("--reference-negative-prompt", action="store_true",
                          help="use the reference's negative prompt (nsfw, lowres, bad anatomy, …)")
    sample.add_argument("--quality-tags", action="store_true",
                        help='wrap prompts as the reference does: "(masterpiece), (best quality), (ultra-detailed), …."')
    sample.add_argument("--seed", type=int, default=0, help="prompt i is seeded with seed + i (default: 0)")
    sample.add_argument("--batch", type=int, default=1, help="prompts per denoising loop (default: 1)")
    sample.add_argument("--fps", type=float, default=24.0, help="frame rate of the mp4s (default: 24)")
    sample.add_argument("--vae", default=None, help="VAE folder (default: the one in the DiT's conditioning.json)")
    sample.add_argument("--text-encoder", default=None,
                        help="text encoder folder or tiny (default: the one in the DiT's conditioning.json)")
    sample.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="which weights of a stage folder (default: ema)")
    sample.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, npu (default: auto)")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "info":
        from components.dit.info import dit_info

        return run_command(dit_info, preset=args.preset, overrides=args.overrides, dit=args.dit,
                           frames=args.frames, height=args.height, width=args.width)
    if args.command == "sample":
        from components.dit.captions import NEGATIVE_PROMPT
        from components.dit.sample_videos import write_samples

        return run_command(write_samples, dit=args.dit, prompts=args.prompts, out=args.out, frames=args.frames,
                           height=args.height, width=args.width, steps=args.steps, guidance=args.guidance,
                           scheduler=args.scheduler, seed=args.seed, batch=args.batch, fps=args.fps,
                           negative_prompt=NEGATIVE_PROMPT if args.reference_negative_prompt else args.negative_prompt,
                           quality_tags=args.quality_tags, vae=args.vae, text_encoder=args.text_encoder,
                           weights=args.weights, device=args.device)
    if args.command == "encode":
        from components.dit.encode import encode_latents
        from components.dit.preflight import check

        preflight = functools.partial(check, args.preset, args.overrides, {"encode_latents"})
        return run_command(encode_latents, preflight, data=args.data, vae=args.vae, out=args.out, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    if args.command == "train":
        from components.dit.preflight import check
        from components.dit.train import train_dit

        # Training reads precomputed text embeddings: no text encoder to check, only the configuration.
        return run_command(train_dit, functools.partial(check, args.preset, args.overrides), stage=args.stage,
                           data=args.data, out=args.out, init=args.init, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    raise AssertionError(args.command)
