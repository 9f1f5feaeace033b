"""Keep freed host memory for reuse instead of handing it back to the system between training steps.

Each CPU training step allocates and frees tensors of tens to hundreds of MB (a batch's edges × channels: about 30 MB
for SchNet at batch 64, 90 MB at 256). glibc's malloc serves blocks above its mmap threshold (adjusted up to 32 MiB)
with fresh pages and hands them back when they are freed, and the system zeroes every page it hands out: 0.83 million
page faults against 0.23 million over 61 SchNet steps on 2,000 MP crystals, and SchNet at batch 256 trained at half
the speed (docs/BENCHMARKS.md, "Freed host memory kept for the next step"). `keep_freed_memory` raises the mmap
threshold to 512 MiB, the trim threshold (free memory at the heap's top kept before any is returned) to 2 GiB and the
top pad (extra memory taken each time the heap grows) to 64 MiB. Only glibc's malloc is tuned, and not when the user
tuned it already (a MALLOC_*_ variable, or glibc.malloc in GLIBC_TUNABLES).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and their values
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 512 * 2**20, M_TRIM_THRESHOLD: 2 * 2**30, M_TOP_PAD: 64 * 2**20}


def keep_freed_memory() -> bool:
    """Apply SETTINGS to glibc's malloc; True if every one applied. A no-op (False) with another C library or a
    preloaded allocator, or when the user set malloc's tuning themselves."""
    if any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.libc_ver()[0] != "glibc" or not _malloc_is_glibcs():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    applied = [mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items()]
    log.debug("malloc tuned to keep freed memory: %s", applied)
    return all(applied)


def _malloc_is_glibcs() -> bool:
    """Whether this process's malloc is glibc's own, not one of an allocator preloaded before it (jemalloc, tcmalloc)."""
    try:
        glibc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    address = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    return address == ctypes.cast(glibc.malloc, ctypes.c_void_p).value
