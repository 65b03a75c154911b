"""`t2v vae …` / `python -m components.vae …`: the causal video VAE's commands."""

from __future__ import annotations

import argparse

from components.core.cli import run_command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m components.vae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="describe a VAE preset or model folder as JSON")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name beside the component (tiny, v1.2) or a YAML path")
    source.add_argument("--vae", help="VAE folder (ours or official Open-Sora Plan v1.2), local or s3://")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one preset value, e.g. --set model.hidden_size=64 (repeatable)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "info":
        from components.vae.info import vae_info

        return run_command(vae_info, preset=args.preset, overrides=args.overrides, vae=args.vae)
    raise AssertionError(args.command)
