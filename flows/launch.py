"""Start a stage as `torchrun` processes, stream their output into a logger, and fail with the failing rank's error.

A stage whose preset asks for more than one process (`launch.nproc_per_node`) runs as
`python -m torch.distributed.run --nproc-per-node N -m components.<c> <command> --out ...`: the same
command line a user would type, so a flow adds nothing a user cannot do by hand. torchrun stops the
other ranks as soon as one fails and names it ("Root Cause"); we turn that into one error that says
which rank failed and what it said last.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence

# torchrun (`python -m torch.distributed.run`) that first asks to die with this process: a flow process that
# is killed takes its job with it (each rank dies with torchrun in turn: `distributed.setup`). Done in
# the child itself, not in a `preexec_fn`, which is unsafe in a process with threads (Prefect has some).
_AGENT = ("import runpy, sys; from components.core.distributed import die_with_parent; "
          "die_with_parent(int(sys.argv[1])); sys.argv = ['torchrun', *sys.argv[2:]]; "
          "runpy.run_module('torch.distributed.run', run_name='__main__', alter_sys=True)")
_RANK_LINE = re.compile(r"^\[default(\d+)\]:(.*)$")
_ROOT_CAUSE_RANK = re.compile(r"rank\s*:\s*(\d+) \(local_rank: (\d+)\)")
_EXIT_CODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


class RankFailed(RuntimeError):
    """A rank of a torchrun job failed; the message names it and ends with its last output."""


def torchrun(name: str, nproc: int, module_args: Sequence[str], log: logging.Logger | logging.LoggerAdapter,
             tail_lines: int = 20) -> None:
    """Run `python -m <module_args>` on `nproc` local processes; every output line goes to `log`."""
    command = [sys.executable, "-c", _AGENT, str(os.getpid()), "--standalone", f"--nproc-per-node={nproc}",
               "--redirects", "3", "--tee", "3", "-m", *module_args]
    log.info("stage %s: torchrun %s", name, " ".join(command[4:]))
    per_rank: dict[int, collections.deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=tail_lines))
    launcher: list[str] = []  # torchrun's own lines (the failure summary)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            match = _RANK_LINE.match(line)
            if match:
                per_rank[int(match.group(1))].append(match.group(2))
            else:
                launcher.append(line)
            log.info("%s", line)
    if proc.returncode != 0:
        raise RankFailed(_failure(name, nproc, proc.returncode, launcher, per_rank))


def _failure(name: str, nproc: int, code: int, launcher: list[str], per_rank: dict[int, collections.deque[str]]) -> str:
    summary = "\n".join(launcher)
    cause = summary.split("Root Cause", 1)[-1]
    rank = _ROOT_CAUSE_RANK.search(cause)
    if rank is None:
        return f"stage {name}: torchrun with {nproc} processes exited with {code}:\n" + "\n".join(launcher[-20:])
    global_rank, local_rank = int(rank.group(1)), int(rank.group(2))
    exit_code = _EXIT_CODE.search(cause)
    said = "\n".join(per_rank.get(local_rank, [])) or "(no output)"
    return (f"stage {name}: rank {global_rank} of {nproc} failed (exit code {exit_code.group(1) if exit_code else '?'}); "
            f"its last output:\n{said}")
