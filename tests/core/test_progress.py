"""Progress lines: what they say, and how few of them a fast loop writes."""

from __future__ import annotations

import logging
import re
import time

from components.core.progress import Progress

LOGGER = "components.test_progress"


def _lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_a_fast_loop_logs_first_and_last_only(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Progress("vae-phase1", 10_000, log=logging.getLogger(LOGGER), every_s=60, bar=False) as progress:
        for step in range(1, 10_001):
            progress.update(step, loss=1.0 / step)
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("vae-phase1: step 1/10000 (0%), loss=1, ")
    assert re.match(r"vae-phase1: step 10000/10000 \(100%\), loss=0\.0001, [\d.e+]+ step/s, elapsed 00:00, ETA 00:00$",
                    lines[1]), lines[1]


def test_lines_come_at_the_set_interval_with_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress = Progress("filter", 40, unit="video", log=logging.getLogger(LOGGER), every_s=0.05, bar=False)
    started = time.monotonic()
    for done in range(1, 41):
        time.sleep(0.01)
        progress.update(done)
    seconds = time.monotonic() - started
    lines = _lines(caplog)
    # About one line per 0.05 s (plus the first and the last), never one per update.
    assert 3 <= len(lines) <= seconds / 0.05 + 2, (len(lines), seconds)
    middle = lines[len(lines) // 2]
    rate = float(re.search(r", ([\d.]+) video/s,", middle).group(1))
    assert 30 < rate < 110  # 100/s at most with 10 ms a video; sleep overshoots on a busy machine
    assert re.search(r", ETA 00:0\d$", middle)


def test_unknown_total_and_resumed_start(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    unknown = Progress("vae-eval", None, unit="clip", log=logging.getLogger(LOGGER), bar=False)
    unknown.update(3)
    assert _lines(caplog)[-1].startswith("vae-eval: clip 3, ") and "ETA" not in _lines(caplog)[-1]
    resumed = Progress("vae-phase2", 100, initial=90, log=logging.getLogger(LOGGER), bar=False)
    time.sleep(0.01)
    resumed.update(91)
    # The rate counts this run's steps only (1 step), not the 90 before the resume.
    rate = float(re.search(r", ([\d.]+) step/s,", _lines(caplog)[-1]).group(1))
    assert rate < 101
