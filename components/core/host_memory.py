"""Keep freed host memory in the process while a loop allocates the same large tensors over and over.

glibc hands every large block (from at most 32 MiB) back to the kernel when it is freed, so the next
tensor of that size page-faults and is zero-filled by the kernel all over again. A chunked inference
loop frees and reallocates the same tensors for every chunk: the v1.2 VAE encoder faulted 5.6 million
pages (22 GB) in one 33x256x256 encode, 10.7 of its 85 CPU seconds spent in the kernel (bench/RESULTS.md).

Inside `reuse_freed_memory()`, glibc serves all blocks from its heap and keeps freed ones for reuse; on
leaving, the previous policy returns and `malloc_trim` gives the free memory back to the kernel. Keep the
scope to loops whose allocations repeat: blocks freed inside it stay resident until it ends. A block
allocated inside and freed after stays in the heap for reuse too, until `release_freed_memory()`.
Elsewhere than glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters and glibc's documented defaults (mallopt(3)).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)  # the process's own symbols: glibc is already loaded


_LIBC = _glibc()


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[None]:
    """Within this block, freed host memory is kept and reused instead of returned to the kernel.

    Nests and is thread safe: the policy holds while any thread is inside a block. `enabled=False` (work
    whose tensors live on an accelerator, which host allocations do not slow) leaves the policy alone.
    """
    global _depth
    if _LIBC is None or not enabled:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(_M_MMAP_MAX, 0)  # every block from the heap, which keeps what is freed
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)


def release_freed_memory() -> None:
    """Give the heap's free memory back to the kernel now (outside any `reuse_freed_memory` block)."""
    with _lock:
        if _LIBC is not None and _depth == 0:
            _LIBC.malloc_trim(0)
