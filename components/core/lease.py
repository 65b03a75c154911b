"""One writer per output folder: an exclusive lease, taken before a stage touches its output.

    with lease.hold(out, owner="t2v data shard") as held:
        ...                    # remove the previous output, write the new one
        held.check()           # still ours: a stale-lease takeover by another run would raise here
        write_manifest(out, ...)

The lease is one object, `<out>/.lease.json`: {owner, host, pid, token, acquired_at, heartbeat}. It is
created only when absent (S3: PutObject with `If-None-Match: *`; locally a hard link, which fails when
the name exists), refreshed every `heartbeat_s` by a compare-and-swap on its version (S3 `If-Match` on
the ETag; locally under an flock of the folder), and deleted on release, again only if still ours.

Another run that finds a lease asks `liveness.is_alive` (the rule the pipeline's run-root claim uses for
MLflow runs): a live holder means refusal with a message naming it (`LeaseHeld`); a holder whose
heartbeat is older than `stale_after_s`, or whose pid is gone on this host, died without releasing, and
its lease is taken over by a compare-and-swap, after a warning that says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core import liveness, storage

LEASE_FILE = ".lease.json"

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the output folder; the message names it."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat went stale): its output must not be marked finished."""


@dataclass
class Lease:
    uri: str
    record: dict[str, Any]
    version: str
    lost: bool = field(default=False)

    def beat(self) -> None:
        """Refresh the heartbeat, only if the lease is still ours."""
        if self.lost:
            return
        record = {**self.record, "heartbeat": f"{time.time():.0f}"}
        version = storage.replace_if_unchanged(self.uri, _encode(record), self.version)
        if version is None:
            self.lost = True
            raise LeaseLost(f"lease {self.uri} was taken over by another run")
        self.record, self.version = record, version

    def check(self) -> None:
        """Raise LeaseLost unless the lease is still ours (call it before marking the output finished)."""
        current = storage.read_versioned(self.uri)
        holder = _decode(current[0]) if current else None
        if self.lost or holder is None or holder.get("token") != self.record["token"]:
            who = "nobody" if holder is None else _who(holder)
            raise LeaseLost(f"lost the lease on {self.uri.rsplit('/', 1)[0]} (now held by {who}): another run "
                            "took it over while this one was stalled; this output is not marked finished")


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _who(record: dict[str, Any]) -> str:
    return (f"'{record.get('owner')}' ({liveness.describe(record.get('host'), record.get('pid'), record.get('heartbeat'))}, "
            f"since {record.get('acquired_at')})")


def acquire(folder: str | Path, owner: str, stale_after_s: float = liveness.STALE_AFTER_S) -> Lease:
    """Take the lease on `folder`, or raise LeaseHeld naming the live holder."""
    uri = storage.join(folder, LEASE_FILE)
    record = {"owner": owner, **liveness.this_owner(), "token": uuid.uuid4().hex,
              "acquired_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    for _ in range(5):  # each pass loses only to a concurrent create, release or takeover
        version = storage.create_exclusive(uri, _encode(record))
        if version is not None:
            return Lease(uri, record, version)
        found = storage.read_versioned(uri)
        if found is None:
            continue  # released in between: try to create it again
        holder = _decode(found[0])
        if holder is not None and liveness.is_alive(holder.get("host"), holder.get("pid"), holder.get("heartbeat"),
                                                    stale_after_s):
            raise LeaseHeld(f"{folder} is being written by {_who(holder)}: wait for it to finish or stop it. If "
                            f"its process is gone, the lease ({uri}) frees up {stale_after_s:.0f} s after its "
                            "last heartbeat.")
        log.warning("taking over the stale lease on %s: %s", folder,
                    "unreadable lease file" if holder is None else f"{_who(holder)} stopped without releasing it")
        version = storage.replace_if_unchanged(uri, _encode(record), found[1])
        if version is not None:
            return Lease(uri, record, version)
    raise LeaseHeld(f"{folder}: could not take the lease {uri}; other runs keep claiming it")


def release(held: Lease) -> None:
    """Delete the lease if it is still ours (a taken-over lease belongs to its new holder)."""
    if not held.lost and not storage.delete_if_unchanged(held.uri, held.version):
        log.warning("lease %s was no longer ours at release; left to its new holder", held.uri)


@contextlib.contextmanager
def hold(folder: str | Path, owner: str, stale_after_s: float = liveness.STALE_AFTER_S,
         heartbeat_s: float = liveness.HEARTBEAT_S) -> Iterator[Lease]:
    """The lease on `folder` for the block, its heartbeat refreshed every `heartbeat_s`; released after,
    whether the block finishes or raises."""
    held = acquire(folder, owner, stale_after_s)
    try:
        with liveness.beating(held.beat, heartbeat_s, f"lease {held.uri}"):
            yield held
    finally:
        release(held)
