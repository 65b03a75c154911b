"""`t2v eval …` / `python -m components.eval …`: evaluation reports (`t2v dit eval` runs `t2v eval dit`)."""

from __future__ import annotations

import argparse
import functools

from components.core.cli import add_config_args, add_tracking_args, run_command


def add_dit_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dit", required=True,
                        help="DiT stage folder, model folder or registered model (models:/t2v-dit@stage5), local or s3://")
    parser.add_argument("--data", default=None,
                        help="latent folder of `t2v dit encode` (training captions and the held-out val/ set); "
                             "default: the one the DiT's conditioning.json names")
    parser.add_argument("--out", required=True, help="output folder or s3:// URI")
    add_config_args(parser, "sampling.steps=30")
    add_tracking_args(parser)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    dit = commands.add_parser(
        "dit", help="prompt adherence, validation loss and CLIP score of a DiT stage (also `t2v dit eval`)",
        epilog="example: t2v eval dit --dit runs/tiny/dit-stage5 --out runs/tiny/dit-eval --set prompts.count=12")
    add_dit_eval_args(dit)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "dit":
        from components.eval.dit import evaluate_dit
        from components.eval.preflight import check

        preflight = functools.partial(check, args.preset, args.overrides, {"evaluate_dit"})
        return run_command(evaluate_dit, preflight, dit=args.dit, data=args.data, out=args.out, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    raise AssertionError(args.command)
