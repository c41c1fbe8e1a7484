"""Keep freed heap memory in the process instead of handing it back to the OS after every step.

A training step allocates and frees the same few MB of activations and gradients. With glibc's
defaults, large blocks are returned to the OS when freed (``munmap`` or a heap trim), so every
step page-faults them in again: ~1,900 minor faults per Fashion-MNIST CNN step here, which made
the float step 15% and the QAT step 11% slower (docs/benchmarks.md). PyTorch's CPU tuning guide
suggests jemalloc or tcmalloc for this; ``mallopt`` gets the same effect with the allocator that
is already loaded, so it needs no extra package:

* ``M_MMAP_THRESHOLD = 32 MiB``: blocks below it come from the heap, not from fresh ``mmap``s;
* ``M_TRIM_THRESHOLD = 1 GiB``: up to 1 GiB of free memory at the top of the heap is kept.

The resident memory then stays at the process's peak instead of dropping between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True where they took effect (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
