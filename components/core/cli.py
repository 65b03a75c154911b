"""Helpers shared by the components' command-line interfaces."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from components.core.config import ConfigError
from components.core.lease import LeaseHeld, LeaseLost
from components.core.storage import StorageError

# What a user can get wrong (a preset, an override, an input, a missing file, a busy output folder): one
# line, exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, StorageError, LeaseHeld, LeaseLost, ValueError, FileNotFoundError)


def is_user_error(exc: BaseException | None) -> bool:
    """`exc`, or an exception it was raised from (a stage's error inside a pipeline's), is a user error."""
    while exc is not None:
        if isinstance(exc, USER_ERRORS):
            return True
        exc = exc.__cause__
    return False


def add_config_args(parser: argparse.ArgumentParser, example: str, default_preset: str = "tiny") -> None:
    """--preset and --set; `example` is an override this very command accepts (tests/test_cli_help.py checks)."""
    parser.add_argument("--preset", default=default_preset,
                        help=f"preset name beside the component (tiny, v1.2) or a YAML path (default: {default_preset})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one configuration value, e.g. --set {example} (repeatable)")


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent-run-id", default=None,
                        help="MLflow run to nest this stage's run under (default: $T2V_PARENT_RUN_ID)")


def run_command(func: Callable[..., Any], preflight: Callable[[], list[str]] | None = None, **kwargs: Any) -> int:
    """Call a component function; print its result as JSON; turn user errors into one clear line.

    `preflight` returns the problems that need no work to find (components/core/preflight.py): any of them
    ends the command before it starts, with exit status 2."""
    problems = preflight() if preflight is not None else []
    if problems:
        print("error: " + "\n".join(problems), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = func(**kwargs)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
