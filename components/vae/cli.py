"""`t2v vae …`: the causal video VAE."""

from __future__ import annotations

import argparse
import sys


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog or "python -m components.vae", description=__doc__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    build_parser(prog).parse_args(argv)
    print("the VAE commands are not implemented yet; see the issue tracker", file=sys.stderr)
    return 2
