"""On-disk graph cache keyed by the source's content and every setting that changes a graph."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch

from crystal_train.atomic_file import atomic_torch_save, exclusive_lock, remove_unfinished_writes
from crystal_train.data.graphs import GRAPH_VERSION
from crystal_train.data.store import GraphStore

log = logging.getLogger(__name__)

# Bump when the layout of cached graphs changes (how they are built is graphs.GRAPH_VERSION).
CACHE_FORMAT_VERSION = 5


def cache_key(**parts) -> str:
    """A stable hash of JSON-serialisable parts (source fingerprint, target, graph settings...)."""
    payload = json.dumps({"cache_format": CACHE_FORMAT_VERSION, "graph_version": GRAPH_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_or_build(cache_dir: Path, key: str, build: Callable[[], GraphStore]) -> GraphStore:
    """Load the store cached under `key`, or build and cache it; safe for concurrent runs.

    A file lock makes a second run wait for the first one's build and then load it, so a sweep
    builds each cache once.
    """
    path = Path(cache_dir) / f"graphs-{key}.pt"
    with exclusive_lock(path.with_suffix(".lock")):
        remove_unfinished_writes(path.parent, of=path.name)  # a build killed while saving; the lock says none is running
        if path.exists():
            try:
                store = GraphStore.from_state(torch.load(path, weights_only=True))
            except Exception as error:  # truncated, emptied or overwritten: it is only a cache
                if _out_of_memory(error):  # the file may be sound: the machine, not the cache, is short
                    raise
                log.warning("Graph cache %s cannot be read (%s: %s); building it again", path, type(error).__name__, error)
                path.unlink()
            else:
                log.info("Graph cache loaded: %s (%d crystals)", path, len(store))
                return store
        store = build()
        atomic_torch_save(store.state(), path)
        log.info("Graph cache built: %s (%d crystals)", path, len(store))
        return store


def _out_of_memory(error: Exception) -> bool:
    """Whether loading failed for want of memory (Python's, or torch's allocator's), not for a damaged file."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))
