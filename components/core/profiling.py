"""Measuring a block of work: a clock that waits for the accelerator, and peak memory (CUDA allocator
peak, or resident memory sampled above the block's start on CPU)."""

from __future__ import annotations

import os
import threading
import time

import torch


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled RSS above the start level on CPU."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak: int | None = None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss()
            if rss is not None:
                self._highest = max(self._highest, rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._rss()
            if self._start is not None:
                self._highest = self._start
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self._highest = max(self._highest, self._rss() or 0)
            self.peak = self._highest - self._start
