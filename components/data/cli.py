"""`t2v data …` / `python -m components.data …`: the data stage's commands."""

from __future__ import annotations

import argparse
import sys

from components.core.cli import add_config_args, add_tracking_args, run_command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic captioned videos and their annotations")
    synth.add_argument("--out", required=True, help="output folder or s3:// URI")
    synth.add_argument("--num", type=int, default=48, help="number of clips")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--kind", choices=["shapes", "photos"], default="shapes")
    add_config_args(synth, "synth.bad_fraction=0.1")
    add_tracking_args(synth)

    shard = commands.add_parser("shard", help="bucket kept clips and write WebDataset shards + manifest")
    shard.add_argument("--annotations", required=True, help="annotations JSON list (local path or s3:// URI)")
    shard.add_argument("--out", required=True, help="output folder or s3:// prefix")
    add_config_args(shard, "shard.workers=4")
    add_tracking_args(shard)

    verify = commands.add_parser("verify", help="re-check every shard of a manifest (exit 1 on any problem)")
    verify.add_argument("manifest", help="manifest.json URI, or the shard output folder")

    filter_ = commands.add_parser("filter", help="probe, score and filter annotated videos into kept/rejected")
    filter_.add_argument("--annotations", required=True, help="annotations JSON (Open-Sora Plan schema), local or s3://")
    filter_.add_argument("--out", required=True, help="output folder or s3:// URI")
    add_config_args(filter_, "filter.workers=2")
    add_tracking_args(filter_)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "synth":
        from components.data.synth import synthesize

        return run_command(synthesize, out=args.out, num=args.num, seed=args.seed, kind=args.kind,
                           preset=args.preset, overrides=args.overrides, parent_run_id=args.parent_run_id)
    if args.command == "shard":
        from components.data.shard import shard

        return run_command(shard, annotations=args.annotations, out=args.out, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    if args.command == "verify":
        from components.data.verify import verify

        outcome: dict = {}

        def check(manifest: str) -> dict:
            outcome.update(verify(manifest))
            return outcome

        code = run_command(check, manifest=args.manifest)
        if code == 0 and not outcome["ok"]:  # exit 1 and name every bad shard on stderr
            print(f"error: {len(outcome['problems'])} problem(s): " + "; ".join(outcome["problems"]), file=sys.stderr)
            return 1
        return code

    if args.command == "filter":
        from components.data.filter import run_filter

        return run_command(run_filter, annotations=args.annotations, out=args.out, preset=args.preset,
                           overrides=args.overrides, parent_run_id=args.parent_run_id)
    raise AssertionError(args.command)
