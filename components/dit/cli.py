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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "info":
        from components.dit.info import dit_info

        return run_command(dit_info, preset=args.preset, overrides=args.overrides, dit=args.dit,
                           frames=args.frames, height=args.height, width=args.width)
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
