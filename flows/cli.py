"""`t2v pipeline …` / `python -m flows …`: run the `t2v-full` pipeline in this process.

    t2v pipeline run [--run-root URI] [--preset tiny] [--set data.synth.bad_fraction=0.1 ...]
    t2v pipeline stages

With `PREFECT_API_URL` set the run is recorded on that Prefect server; without it Prefect starts a
temporary local server for the run (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from components.core.cli import add_config_args, is_user_error


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m flows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline in-process")
    run.add_argument("--run-root", default=None,
                     help="artifact folder or s3:// URI for this run (default: $T2V_HOME/runs/<preset>)")
    add_config_args(run, "vae.train.lr=1e-4")
    run.add_argument("--num", type=int, default=24, help="synthetic clips to make (default: 24)")
    run.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: 0)")
    run.add_argument("--kind", default="shapes", help="synthetic data kind: shapes or photos")
    run.add_argument("--annotations", default=None,
                     help="ingest these annotations (JSON URI) instead of synthesizing data")
    run.add_argument("--stage-deployment", default=None,
                     help="run each stage as deployment t2v-<stage>/<NAME> on its work pool (e.g. local)")
    run.add_argument("--until", default=None, help="stop after this stage")

    commands.add_parser("stages", help="list the pipeline's stages in order")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "stages":
        from flows.stages import STAGES

        for stage in STAGES:
            print(f"{stage.name:<12} {stage.component:<5} {stage.function}")
        return 0

    from flows import preflight
    from flows.stages import chain

    try:  # the user's mistakes end here, in a line or two and exit status 2, before Prefect starts
        preflight.check(chain(args.annotations, args.until), args.preset, args.overrides, args.annotations)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # The temporary server's usage reports race its own start-up on a busy machine ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    console = logging.StreamHandler()
    console.setFormatter(_ShortUserErrors("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    from flows.pipeline import RunRootInUse, StageFailed, claim_run_root, pipeline
    from flows.stages import absolute_root, default_run_root

    try:  # another pipeline alive on this run root: say so before Prefect starts (the flow checks again)
        claim_run_root(absolute_root(args.run_root or default_run_root(args.preset)))
    except RunRootInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = pipeline(run_root=args.run_root, preset=args.preset, overrides=args.overrides, num=args.num,
                          seed=args.seed, kind=args.kind, annotations=args.annotations,
                          stage_deployment=args.stage_deployment, until=args.until)
    except (StageFailed, ValueError) as exc:
        if not is_user_error(exc):  # a bug: its traceback, from where it was raised
            traceback.print_exception(exc.__cause__ or exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2 if is_user_error(exc) else 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


class _ShortUserErrors(logging.Formatter):
    """Console lines without the traceback of a user's error: its message ends the output, and the flow
    run's logs on the Prefect server keep the full record. A bug's traceback stays."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and is_user_error(record.exc_info[1]):
            # A copy: Prefect's API handler saw the record first and keeps its traceback.
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
