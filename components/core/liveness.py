"""Is the process that claimed some work still alive? One answer for every claim we make.

A claim (an MLflow run's owner tags, an output folder's lease) records the host, the pid and a heartbeat
(seconds since the epoch) that its owner refreshes while it works. A killed process refreshes nothing and
releases nothing, so a later claimant decides from these three facts alone: the owner is gone when its
heartbeat is older than a bound, or when it ran on this host and its pid no longer exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

# The owner refreshes its heartbeat every HEARTBEAT_S; a claim whose heartbeat is older than STALE_AFTER_S
# (six missed beats: a slow storage round trip or a GC pause is not a death) may be taken over.
HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0

log = logging.getLogger(__name__)


def this_owner() -> dict[str, str]:
    """This process as an owner: host, pid, and a first heartbeat."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "heartbeat": f"{time.time():.0f}"}


def seconds_since(heartbeat: str | float | None) -> float:
    """Age of a heartbeat (infinite without one, or when it is not a number)."""
    try:
        return max(time.time() - float(heartbeat), 0.0)
    except (TypeError, ValueError):
        return float("inf")


def is_alive(host: str | None, pid: str | int | None, heartbeat: str | float | None, stale_after_s: float) -> bool:
    """Whether the owner may still be working: False when its heartbeat is older than `stale_after_s`, or
    when it ran on this host and its pid is gone."""
    if seconds_since(heartbeat) > stale_after_s:
        return False
    if host != socket.gethostname():
        return True  # another machine: only the heartbeat tells
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def describe(host: str | None, pid: str | int | None, heartbeat: str | float | None) -> str:
    """'process 123 on host-a, heartbeat 4 s ago' for messages."""
    return f"process {pid} on {host}, heartbeat {seconds_since(heartbeat):.0f} s ago"


@contextlib.contextmanager
def beating(beat: Callable[[], None], every_s: float, name: str) -> Iterator[None]:
    """Call `beat` every `every_s` seconds from a daemon thread while the block runs. A failing beat is
    logged, not raised: a storage or tracking hiccup must not stop the work it watches."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                beat()
            except Exception as exc:
                log.warning("heartbeat %s not recorded: %s", name, exc)

    thread = threading.Thread(target=loop, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
