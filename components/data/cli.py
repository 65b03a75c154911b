"""`t2v data …` / `python -m components.data …`: the data stage's commands."""

from __future__ import annotations

import argparse

from components.core.cli import add_config_args, add_tracking_args, run_command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic captioned videos and their annotations")
    synth.add_argument("--out", required=True, help="output folder or s3:// URI")
    synth.add_argument("--num", type=int, default=48, help="number of clips")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--kind", choices=["shapes", "photos"], default="shapes")
    add_config_args(synth)
    add_tracking_args(synth)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "synth":
        from components.data.synth import synthesize

        return run_command(synthesize, out=args.out, num=args.num, seed=args.seed, kind=args.kind,
                           preset=args.preset, overrides=args.overrides, parent_run_id=args.parent_run_id)
    raise AssertionError(args.command)
