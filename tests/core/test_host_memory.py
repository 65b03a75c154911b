"""`reuse_freed_memory`: freed blocks are reused (no page faults) inside, handed back to the kernel after.

Each case runs in a fresh interpreter: glibc's heap carries over whatever earlier code in a process did.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's")

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 64 * 2**20  # bytes; far above glibc's largest mmap threshold (32 MiB)

HELPERS = f"""
import json, resource, torch
from components.core.host_memory import release_freed_memory, reuse_freed_memory
FLOATS, PAGES = {BLOCK // 4}, {BLOCK} // resource.getpagesize()

def faults(rounds=24):
    # Most page faults of allocating, writing and freeing one block over the last 12 rounds (the heap
    # takes a few rounds to settle around the small allocations made in between).
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(FLOATS)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return max(counts[-12:]) / PAGES  # in blocks

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / {BLOCK}  # in blocks
"""


def run_case(body: str) -> dict:
    script = HELPERS + body + "\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_inside_and_returned_after():
    out = run_case("""
out = {"default": faults(), "resident_before": resident()}
with reuse_freed_memory():
    out["inside"] = faults()
    out["kept"] = resident() - out["resident_before"]
out["returned"] = resident() - out["resident_before"]
""")
    assert out["default"] > 0.5  # by default every allocation faults its pages in again
    assert out["inside"] < 0.02
    assert out["kept"] > 0.5  # the freed block stays in the process...
    assert out["returned"] < 0.25  # ...until the block ends


def test_nested_and_disabled_blocks():
    out = run_case("""
with reuse_freed_memory(enabled=False):
    out = {"disabled": faults()}
out["resident_before"] = resident()
with reuse_freed_memory():
    with reuse_freed_memory():
        pass
    out["inside_outer"] = faults()
out["returned"] = resident() - out["resident_before"]
""")
    assert out["inside_outer"] < 0.02  # the inner block's end keeps the policy
    assert out["returned"] < 0.25
    assert out["disabled"] > 0.5


def test_memory_freed_after_the_block_is_released_on_request():
    out = run_case("""
out = {"resident_before": resident()}
with reuse_freed_memory():
    kept = torch.ones(FLOATS)  # allocated in the kept heap, freed after the block
    above = torch.ones(FLOATS)  # keeps `kept` off the heap's top, which glibc would trim on free
del kept
out["held"] = resident() - out["resident_before"]
release_freed_memory()
out["released"] = resident() - out["resident_before"]
""")
    # In blocks over the start: `above` (alive) plus `kept` (freed) while held, `above` alone once released.
    assert out["held"] > 1.5
    assert out["released"] < 1.25
