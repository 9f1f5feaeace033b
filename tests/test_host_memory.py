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
for mb in (20, 24, 22, 28, 26, 100, 90):  # SchNet's at batch 64, then at batch 256
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
    first, _, smaller, _, smaller_again, large, smaller_large = tuned["faults"]
    assert first > 100 and large > 100  # fresh pages, counted (huge pages make it fewer than the blocks' 4 kB pages)
    assert smaller + smaller_again <= first / 10  # 22 MB after 24 MB, 26 MB after 28 MB: reused
    assert smaller_large <= large / 10  # 90 MB after 100 MB too: above the 32 MiB that glibc's own adjustment stops at


@pytest.mark.parametrize(("name", "value"), [("MALLOC_ARENA_MAX", "2"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")])
def test_a_users_own_malloc_settings_are_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False
