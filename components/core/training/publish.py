"""The end of a training stage, what every trainer publishes beside its model folders (rank 0 only)."""

from __future__ import annotations

from typing import Any

from components.core import stage, storage
from components.core.training import checkpoint
from components.core.training.events import EventLog
from components.core.training.run import RankRun

METRICS_FILE = "metrics.json"


def publish_records(out: str, metrics: dict[str, Any], events: EventLog, final_checkpoint: str, run: RankRun,
                    step: int) -> dict[str, dict[str, Any]]:
    """Write `metrics.json` and log it to the run; return the manifest entries of it, of the events file and
    of the final checkpoint's index (so the manifest vouches for the state the model folders came from)."""
    storage.write_json(storage.join(out, METRICS_FILE), metrics)
    files = {}
    final_name = storage.relative_to(final_checkpoint, out)
    for name in (METRICS_FILE, events.uri.rsplit("/", 1)[-1], f"{final_name}/{checkpoint.INDEX_FILE}"):
        if storage.exists(storage.join(out, name)):
            files[name] = stage.file_entry(storage.join(out, name))
    run.log_metrics({"final/steps": step}, step=step)
    run.log_dict(metrics, METRICS_FILE)
    return files
