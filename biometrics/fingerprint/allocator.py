"""An allocator setting for processes that extract fingerprints again and again.

Not called by the pipeline itself (``biometrics`` computes, it does not tune
the process it runs in): the daemon and the benchmark opt in at start.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# glibc's mallopt parameters (malloc.h) and the values set once per process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_BELOW = 4 << 20  # arrays under 4 MB come from the heap, not from fresh mappings
HEAP_KEPT = 32 << 20  # up to 32 MB of freed heap is kept for the next capture
_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc reuse the memory one extraction frees for the next one; True if it was set.

    An extraction allocates and frees a few dozen image-sized arrays (about 10 MB
    at 500 dpi). With glibc's defaults the top of the heap is handed back to the
    kernel after each capture and taken again by the next, and every new page
    costs a fault: about 1,200 faults and 15 % of the extraction time on a
    388x374 image. Blocks under HEAP_BLOCKS_BELOW from the heap and up to
    HEAP_KEPT of it kept make them go away. The price: up to HEAP_KEPT more
    resident memory. Acts once per process and only where glibc is the C
    library; it changes no result.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return False
    _allocator_tuned = True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT))
