"""How the process heap returns memory: glibc's arena count for long numerical runs.

With glibc's defaults every thread that allocates (numba's pool, the run's
helper threads, pyarrow) may get its own malloc arena (up to 8 per core), and
memory freed inside an arena stays resident until the arena's top is free.
A run over a million cells then keeps about a quarter more resident memory
than it uses. :func:`bound_heap` caps the arenas at :data:`ARENA_MAX` (2):
threads share two heaps, so freed blocks are reused instead of a new arena
growing. It changes no result, only peak resident memory, at a few per cent
of CPU from lock contention (measured in ``docs/validation/analyze_scaling.md``).
The adaptive mmap threshold is left alone: a fixed low threshold lowers the
peak a little more but makes segmentation's many mid-sized temporaries page
in and out.

The CLI calls it once at start-up, and cohort Dask workers get
``MALLOC_ARENA_MAX`` in their environment before they start; API users may
call it themselves. Set ``TIBSPACE_GLIBC_MALLOC=1`` to keep glibc's defaults.
Elsewhere than glibc (macOS, musl, Windows) it does nothing.

Examples
--------
>>> from tibspace.heap import bound_heap, heap_environment
>>> bound_heap() in (True, False)
True
>>> heap_environment().get("MALLOC_ARENA_MAX", "2")
'2'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc ``mallopt`` parameter number of ``M_ARENA_MAX`` (``malloc.h``).
M_ARENA_MAX = -8
#: Arenas the process may use.
ARENA_MAX = 2


def bound_heap() -> bool:
    """Cap this process's malloc arenas at :data:`ARENA_MAX`; True if applied."""
    if os.environ.get("TIBSPACE_GLIBC_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX))


def heap_environment() -> dict[str, str]:
    """The same setting as environment variables for a child process (empty: keep the defaults)."""
    return {} if os.environ.get("TIBSPACE_GLIBC_MALLOC") == "1" else {"MALLOC_ARENA_MAX": str(ARENA_MAX)}
