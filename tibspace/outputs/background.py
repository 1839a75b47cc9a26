"""Output files written on threads of their own while the main thread writes the others.

Only work that releases the GIL for most of its time is worth a thread here
(Arrow's CSV / Parquet writers and string kernels, GEOS's vectorised
functions). Each job owns its input: Arrow tables (immutable), deep copies of
pandas columns, or private copies of geometries (the concurrency rule in
docs/architecture.md); nothing it reads is touched by the main thread.
"""

from __future__ import annotations

import threading
from typing import Callable


class BackgroundWriter:
    """Run ``fn(*args, **kwargs)`` on a daemon thread; :meth:`join` re-raises its error.

    Examples
    --------
    >>> w = BackgroundWriter("demo", lambda a, b: a + b, 1, 2)
    >>> w.join()
    3
    """

    def __init__(self, name: str, fn: Callable, *args, **kwargs):
        self._error: BaseException | None = None
        self._value = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs),
                                        name=f"tibspace-{name}", daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._error = exc

    def join(self):
        """Wait for the job; its return value, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def join_all(writers, *, quiet: bool = False) -> None:
    """Join every writer (all of them, even after an error), then raise the first
    error (``quiet=True``: raise nothing, for a caller that is already failing)."""
    first = None
    for w in writers:
        try:
            w.join()
        except BaseException as exc:  # noqa: BLE001 - the first one is raised below
            first = first or exc
    if first is not None and not quiet:
        raise first
