"""`t2v pipeline …` / `python -m flows …`: run the pipeline flow in-process."""

from __future__ import annotations

import argparse
import sys


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog or "python -m flows", description=__doc__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    build_parser(prog).parse_args(argv)
    print("the pipeline flow is not wired yet", file=sys.stderr)
    return 2
