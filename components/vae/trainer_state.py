"""Where VAE training keeps its state in the output folder: step checkpoints and the event log.

- `checkpoints/step-N.pt`: everything needed to continue bit-for-bit (generator, discriminator, EMA,
  both optimizers, RNG states, loader position, step), written atomically through
  `components.core.checkpoints` and read back with `weights_only=True`.
- `events.jsonl`: one JSON line per unusual event (skipped step, rollback, resume), rewritten whole on
  each event so it also works on S3, which cannot append.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from components.core import checkpoints, storage

CHECKPOINT_DIR = "checkpoints"
EVENTS_FILE = "events.jsonl"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"step-(\d+)\.pt$")


def checkpoint_uri(out: str | Path, step: int) -> str:
    return storage.join(out, CHECKPOINT_DIR, f"step-{step}.pt")


def list_checkpoints(out: str | Path) -> list[tuple[int, str]]:
    """(step, uri) of every complete checkpoint in `out`, oldest first (temp files are never listed)."""
    found = []
    for uri in storage.list_files(storage.join(out, CHECKPOINT_DIR)):
        match = _CHECKPOINT_NAME.search(uri)
        if match:
            found.append((int(match.group(1)), uri))
    return sorted(found)


def latest_checkpoint(out: str | Path) -> tuple[int, str] | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(out: str | Path, step: int, state: dict[str, Any], keep: int) -> tuple[str, str]:
    """Write `step-N.pt` atomically, then delete all but the newest `keep`. Returns (uri, sha256)."""
    uri = checkpoint_uri(out, step)
    sha = checkpoints.save_training_state(uri, {"format": CHECKPOINT_FORMAT, "step": step, **state})
    for _, old_uri in list_checkpoints(out)[:-keep]:
        storage.delete(old_uri)
    return uri, sha


def load_checkpoint(uri: str) -> dict[str, Any]:
    state = checkpoints.load_training_state(uri)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{uri}: checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
    return state


class EventLog:
    """The run's unusual events, kept in memory and mirrored to `events.jsonl` in the output folder."""

    def __init__(self, out: str | Path):
        self.uri = storage.join(out, EVENTS_FILE)
        self.events: list[dict[str, Any]] = []
        if storage.exists(self.uri):  # a resumed run keeps the history of the interrupted one
            text = storage.read_text(self.uri)
            self.events = [json.loads(line) for line in text.splitlines() if line.strip()]

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": kind, **fields}
        self.events.append(event)
        storage.write_text(self.uri, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.events))
        return event

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event["event"] == kind)
