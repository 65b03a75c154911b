"""`reuse_freed_memory`: freed blocks are reused (no page faults) inside, handed back to the kernel after."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from components.core.host_memory import reuse_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's")

BLOCK_FLOATS = 16 * 2**20  # 64 MiB: far above glibc's largest mmap threshold (32 MiB)
PAGES = BLOCK_FLOATS * 4 // resource.getpagesize()


def _faults_per_allocation(rounds: int = 24) -> float:
    """Page faults of allocating, writing and freeing one block, the most of the last 12 rounds (the
    heap takes a few rounds to settle around the small allocations made in between)."""
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(BLOCK_FLOATS)  # every page written, then freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return max(faults[-12:])


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_freed_blocks_are_reused_inside_and_returned_after():
    assert _faults_per_allocation() > PAGES / 2  # by default every allocation faults its pages in again
    resident = _resident_bytes()
    with reuse_freed_memory():
        assert _faults_per_allocation() < PAGES / 50
        assert _resident_bytes() - resident > BLOCK_FLOATS * 4 / 2  # the freed block is kept...
    assert _resident_bytes() - resident < BLOCK_FLOATS * 4 / 4  # ...until the block ends


def test_nested_blocks_keep_the_policy_until_the_outer_one_ends():
    resident = _resident_bytes()
    with reuse_freed_memory():
        with reuse_freed_memory():
            pass
        assert _faults_per_allocation() < PAGES / 50
    assert _resident_bytes() - resident < BLOCK_FLOATS * 4 / 4


def test_disabled_blocks_leave_the_policy_alone():
    with reuse_freed_memory(enabled=False):
        assert _faults_per_allocation() > PAGES / 2
