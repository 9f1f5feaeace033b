"""Host memory a training step frees is kept for the next step instead of being handed back to the system."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from crystal_train.host_memory import keep_freed_memory

# Allocates blocks the size of a step's largest tensors, each freed before the next, and prints the page faults each
# allocation took: a block served from memory freed before takes none, one from fresh pages one per page it touches.
ALLOCATIONS = """
import json, resource, sys
import numpy as np
from crystal_train.host_memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
faults = []
for mb in (20, 24, 22, 28, 26):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(mb * 2**20 // 4, dtype=np.float32)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _allocations(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", ALLOCATIONS, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc is tuned on glibc only")
def test_a_block_no_larger_than_one_freed_before_needs_no_fresh_pages():
    tuned = _allocations("tuned")
    assert tuned["tuned"] is True
    first, _, smaller, _, smaller_again = tuned["faults"]
    assert first > 100  # fresh pages, counted (huge pages make it fewer than the block's 5,120 small ones)
    assert smaller + smaller_again <= first / 10  # 22 MB after 24 MB, 26 MB after 28 MB: reused


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
