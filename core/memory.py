"""Let freed large numpy temporaries be reused instead of returned to the system.

A numpy training step allocates and frees many arrays of a few MB (gate buffers,
activations, gradients). glibc serves blocks above its mmap threshold with fresh mmap
calls and returns them on free, so every step page-faults its temporaries in again, which
costs about a quarter of a recurrent step here. Raising the mmap and trim thresholds keeps
those blocks on the heap, where the next step reuses them. The setting is process-wide and
affects nothing but speed; where the C library is not glibc it is skipped.
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=1 << 30, top_pad=64 << 20):
    """Apply glibc's mallopt settings (bytes); returns True when they were applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
