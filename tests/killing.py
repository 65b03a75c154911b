"""Crash tests from the outside: SIGKILL a running process the moment a file (or object) appears.

Production code carries no kill hooks; a test starts the process with `subprocess.Popen`, watches its
output and kills it like a power cut or an OOM killer would. Checkpoint writes are atomic (temp file +
rename locally, a single PUT on S3), so a file that has appeared is complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when_file_appears(proc: subprocess.Popen, appeared: Path | Callable[[], bool], timeout: float,
                           log: Path | None = None, poll_seconds: float = 0.002) -> float:
    """SIGKILL `proc` as soon as `appeared` (a path, or a predicate) is true; wait for it to die.

    Returns the seconds from seeing the file to the process being reaped (the kill's own latency).
    Fails, killing the process, when it exits first or `timeout` passes; `log` (its output) goes into
    the message.
    """
    predicate = appeared.exists if isinstance(appeared, Path) else appeared
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {appeared} appeared"
                                 f"{_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{appeared} did not appear within {timeout}s{_tail(log)}")
        time.sleep(poll_seconds)
    seen = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic() - seen


def _tail(log: Path | None) -> str:
    return f"; output:\n{log.read_text(errors='replace')[-4000:]}" if log is not None and log.exists() else ""
