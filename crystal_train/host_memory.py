"""Keep freed host memory for reuse instead of handing it back to the system between training steps.

Each CPU training step allocates and frees tensors of tens of MB (a batch's edges × channels, about 30 MB for SchNet
at batch 64). glibc's malloc hands such blocks back to the system when they are freed and asks for fresh pages at the
next step, and the system zeroes every page it hands out: on a 2-core EPYC that was 0.6 million page faults in 28
SchNet steps and about a tenth of their time (docs/BENCHMARKS.md). Raising malloc's mmap threshold to its maximum
(32 MiB) and its trim threshold to 1 GiB keeps that memory in the process instead. Only glibc (Linux) is tuned, and
not when the user set any MALLOC_*_ variable, which then governs as glibc documents it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and their values
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 64 * 2**20}


def keep_freed_memory() -> bool:
    """Apply SETTINGS to glibc's malloc; True if applied. A no-op elsewhere, or when a MALLOC_*_ variable is set."""
    if any(name.startswith("MALLOC_") for name in os.environ) or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # glibc's, linked into this process
    applied = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
    log.debug("malloc tuned to keep freed memory: %s", applied)
    return applied
