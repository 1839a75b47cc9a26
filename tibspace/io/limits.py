"""Declared-size limits and memory estimates, checked from metadata before pixels are read.

A TIFF declares its plane size in a few header bytes: a 2 KB file can claim
200000 × 200000 px (80 GB of uint16). Two checks refuse such files before any
allocation, each with one line naming the file, the declared size, the limit
and what to do:

* :func:`check_declared_pixels` — the declared pixels of one plane (Y·X) of an
  image run must not exceed ``max_pixels`` (:data:`MAX_PIXELS`, 2·10¹⁰ px by
  default; ``--max-pixels`` / ``max_pixels=`` raises it). 2·10¹⁰ px is a whole
  25 × 75 mm glass slide scanned at 0.3 µm/px (83 000 × 250 000 px); real
  whole-slide multiplex scans are 10–30× smaller per plane (a 20 × 15 mm tissue
  at 0.325 µm/px is 2.8·10⁹ px), while the 200000² bomb is 4·10¹⁰ px. The limit
  is per plane because channels do not make a plane larger: a 60-channel
  whole slide is legitimate, and many channels cost memory per tile, which
  :func:`check_memory` bounds.
* :func:`check_memory` — bytes that must be held at once (one strip or tile
  that has to be decoded whole, a given label mask read whole, ...) must fit
  in :data:`MEMORY_FRACTION` of the memory available now (``MemAvailable`` of
  ``/proc/meminfo``, else psutil; no check where neither is known).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

from tibspace.errors import InputError

MAX_PIXELS = 20_000_000_000  # 2·10¹⁰ px per plane: see the module docstring
MEMORY_FRACTION = 0.8        # of the memory available when the check runs


def check_max_pixels_value(value: Any) -> Optional[int]:
    """``value`` as a positive whole number of pixels (``None`` passes: no limit given)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"max_pixels must be a number of pixels per plane, got {value!r}") from None
    if not (math.isfinite(v) and v >= 1):
        raise InputError(f"max_pixels must be a positive number of pixels per plane, got {value!r}")
    return int(v)


def check_declared_pixels(path: Path, ny: int, nx: int, n_channels: int, max_pixels: Optional[int]) -> None:
    """One-line :class:`InputError` when a plane declares more than ``max_pixels`` pixels.

    Examples
    --------
    >>> check_declared_pixels(Path("a.tif"), 1000, 1000, 3, MAX_PIXELS)
    >>> check_declared_pixels(Path("b.tif"), 200000, 200000, 1, MAX_PIXELS)
    Traceback (most recent call last):
    ...
    tibspace.errors.InputError: b.tif: declares 200000×200000 px planes (4e+10 px, 1 channel)...
    """
    if max_pixels is None:
        return
    n = int(ny) * int(nx)
    if n > max_pixels:
        raise InputError(f"{path}: declares {ny}×{nx} px planes ({n:.3g} px, {n_channels} channel"
                         f"{'' if n_channels == 1 else 's'}), more than the limit of {max_pixels:.3g} px "
                         "per plane; if the image is real, raise the limit with --max-pixels "
                         "(API: max_pixels=)")


def available_memory_bytes() -> Optional[int]:
    """Memory available to a new allocation now (bytes), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed / not supported: no estimate
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(path: Path, what: str, nbytes: float, remedy: str) -> None:
    """One-line :class:`InputError` when ``nbytes`` (for ``what``) exceed the memory at hand.

    ``remedy`` says what the user can do (re-export tiled, a smaller mask ...).
    """
    avail = available_memory_bytes()
    if avail is None:
        return
    limit = MEMORY_FRACTION * avail
    if nbytes > limit:
        raise InputError(f"{path}: {what} needs {_gib(nbytes)} of memory at once, more than the "
                         f"{_gib(limit)} available ({MEMORY_FRACTION:.0%} of free memory); {remedy}")
