"""`t2v vae …` / `python -m components.vae …`: the causal video VAE's commands."""

from __future__ import annotations

import argparse
import functools

from components.core.cli import add_config_args, add_tracking_args, run_command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.vae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="describe a VAE preset or model folder as JSON")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name beside the component (tiny, v1.2) or a YAML path")
    source.add_argument("--vae", help="VAE folder (ours or official Open-Sora Plan v1.2), local or s3://")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one preset value, e.g. --set model.hidden_size=64 (repeatable)")

    train = commands.add_parser("train", help="train the VAE (phase 1, or phase 2 from phase 1's EMA weights)")
    train.add_argument("--phase", type=int, choices=[1, 2], required=True)
    train.add_argument("--data", required=True, help="shard manifest (folder or manifest.json), local or s3://")
    train.add_argument("--out", required=True, help="output folder or s3:// URI (resumes when it holds checkpoints)")
    train.add_argument("--init", default=None,
                       help="phase 2: phase 1's output folder; phase 1: optional VAE folder (e.g. tail-initialised)")
    add_config_args(train, "train.lr=1e-4")
    add_tracking_args(train)

    evaluate = commands.add_parser("eval", help="PSNR/SSIM/LPIPS, speed and memory of a VAE (reference protocol)")
    evaluate.add_argument("--vae", required=True, help="VAE folder (ours or official v1.2), local or s3://")
    evaluate.add_argument("--data", required=True,
                          help="shard manifest, annotations JSON, or a folder of videos, local or s3://")
    evaluate.add_argument("--out", required=True, help="output folder or s3:// URI")
    add_config_args(evaluate, "eval.max_clips=8")
    add_tracking_args(evaluate)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "info":
        from components.vae.info import vae_info

        return run_command(vae_info, preset=args.preset, overrides=args.overrides, vae=args.vae)
    if args.command in ("train", "eval"):
        from components.vae.preflight import check

        function = {"train": "train_vae", "eval": "evaluate_vae"}[args.command]
        preflight = functools.partial(check, args.preset, args.overrides, {function})
    if args.command == "train":
        from components.vae.train import train_vae

        return run_command(train_vae, preflight, phase=args.phase, data=args.data, out=args.out, init=args.init,
                           preset=args.preset, overrides=args.overrides, parent_run_id=args.parent_run_id)
    if args.command == "eval":
        from components.vae.evaluate import evaluate_vae

        return run_command(evaluate_vae, preflight, vae=args.vae, data=args.data, out=args.out, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    raise AssertionError(args.command)
