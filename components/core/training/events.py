"""The run's unusual events (skipped step, rollback, resume, a damaged checkpoint) as `events.jsonl`.

Kept in memory and rewritten whole on each event, so it also works on S3, which cannot append. Only
rank 0 writes it; the other ranks keep the same list in memory (their decisions are the same).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from components.core import storage

EVENTS_FILE = "events.jsonl"

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, out: str | Path, write: bool = True):
        self.uri = storage.join(out, EVENTS_FILE)
        self.write = write
        self.events: list[dict[str, Any]] = []
        if storage.exists(self.uri):  # a resumed run keeps the history of the interrupted one
            text = storage.read_text(self.uri)
            self.events = [json.loads(line) for line in text.splitlines() if line.strip()]

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": kind, **fields}
        self.events.append(event)
        if self.write:
            storage.write_text(self.uri, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.events))
        (log.info if kind == "resume" else log.warning)("event %s", event)
        return event

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event["event"] == kind)
