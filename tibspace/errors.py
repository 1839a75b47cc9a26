"""Errors tibspace raises for bad input.

Every error a user can cause is a :class:`TibspaceError` whose message is one
line that says what is wrong (which file, which channel, what was expected)
and what to do. The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


class TibspaceError(Exception):
    """Base class of all user-facing tibspace errors (one-line message)."""


class InputError(TibspaceError, ValueError):
    """An input file, table, panel or argument is not what tibspace expects."""


class PanelError(InputError):
    """The marker panel file is malformed or does not fit the image/table."""


class NoTumourRegionError(TibspaceError):
    """The sample has no tumour cells/region, so tumour geometry is undefined."""


class Cancelled(TibspaceError):
    """The user cancelled a running job (raised from a progress callback)."""


def positive_um(value, name: str, *, where=None, unit: str = "µm") -> float:
    """``value`` as a positive, finite float (a length in µm), else a one-line InputError.

    Examples
    --------
    >>> positive_um("30", "radius_um")
    30.0
    """
    import math

    prefix = f"{where}: " if where is not None else ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{prefix}{name} must be a number of {unit}, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{prefix}{name} must be a positive number of {unit}, got {value!r}")
    return v
