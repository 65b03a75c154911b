"""`t2v eval …`: evaluation reports."""

from __future__ import annotations

import argparse
import sys


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog or "python -m components.eval", description=__doc__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    build_parser(prog).parse_args(argv)
    print("DiT sample evaluation is not implemented yet; see the issue tracker", file=sys.stderr)
    return 2
