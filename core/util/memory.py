"""Let freed large numpy temporaries be reused instead of returned to the system.

A numpy training step allocates and frees many arrays of a few MB (gate buffers,
activations, gradients). glibc serves blocks above its mmap threshold with fresh mmap
calls and returns them on free, so every step page-faults its temporaries in again, which
costs about a quarter of a recurrent step here. Raising the mmap and trim thresholds keeps
those blocks on the heap, where the next step reuses them. The setting is process-wide and
affects nothing but speed; where the C library is not glibc it is skipped.

Also: whether a model fits in this machine's memory at all (`check_fits`).
"""
import ctypes
import ctypes.util
import os

from core.util.errors import UserError

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
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad)))


def check_fits(num_weights, what):
    """UserError when num_weights float32 weights, their gradients and two optimizer moments
    (16 bytes a weight) exceed this machine's memory; `what` names the model in the message."""
    need = 16 * num_weights
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total:
        raise UserError(f"{what} has {num_weights:,} weights, which with their gradients and "
                        f"optimizer state need about {need / 2**30:,.0f} GiB; this machine has "
                        f"{total / 2**30:,.0f} GiB: use smaller "
                        "--hidden_dim/--wordvec_dim/--dim_feedforward")
