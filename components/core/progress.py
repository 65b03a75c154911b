"""Progress of a long stage where the user looks: a tqdm bar on a terminal, log lines everywhere.

The log lines go through `logging` (the caller's logger), so they reach whatever collects the
component's logs: the console of a CLI, a rank's log file, or a Prefect flow run's logs (the flows
attach Prefect's handler to the `components` logger; components never import prefect). They come at a
bounded rate, one every `every_s` seconds at most plus the first and the last, so a stage of a million
steps logs no more than a stage of ten:

    vae-phase1: step 120/200000 (0%), loss=0.0812, 3.41 step/s, elapsed 00:35, ETA 16:17:05

On a terminal a bar is drawn as well (tqdm), and the log lines thin out to one every
`TERMINAL_EVERY_S`, since the bar already shows the same numbers.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

EVERY_S = 5.0  # log lines when nobody watches a bar (a worker, a pipe, a file)
TERMINAL_EVERY_S = 60.0  # log lines beside a bar

_default_log = logging.getLogger(__name__)


class Progress:
    """`update(done, **metrics)` with the absolute count done so far (a step number, clips so far).

    `total` may be None when the count is not known up front (then no percentage and no ETA).
    `initial` is where a resumed stage starts: rates and ETA count only the work of this run.
    """

    def __init__(self, description: str, total: int | None, unit: str = "step", initial: int = 0,
                 log: logging.Logger | None = None, every_s: float | None = None, bar: bool | None = None):
        self.description, self.total, self.unit, self.initial = description, total, unit, initial
        self.log = log or _default_log
        show_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True,
                        leave=False) if show_bar else None
        self.every_s = every_s if every_s is not None else (TERMINAL_EVERY_S if self.bar else EVERY_S)
        self.done = initial
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self._logged_at: float | None = None  # None: nothing logged yet, so the first update logs

    def update(self, done: int, **metrics: Any) -> None:
        self.done = done
        self.metrics = {name: value for name, value in metrics.items() if value is not None}
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix({k: _short(v) for k, v in self.metrics.items()}, refresh=False)
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if finished or self._logged_at is None or now - self._logged_at >= self.every_s:
            self._logged_at = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """One line: done/total (percent), metrics, rate, elapsed and ETA."""
        elapsed = (now if now is not None else time.monotonic()) - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.unit} {self.done}"
                 + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        parts += [f"{name}={_short(value)}" for name, value in self.metrics.items()]
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
