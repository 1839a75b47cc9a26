"""Where the tile tasks run: in this process or on a Dask ``distributed`` cluster.

:func:`start_scheduler` turns the ``scheduler`` argument of
:func:`tibspace.segment.segment_image` into a client (or ``None`` for
in-process) and a function that closes what was opened; :func:`run_tasks` runs
one function over a list of argument tuples and returns the results in order,
reporting progress per task.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from tibspace.progress import report


def start_scheduler(scheduler: Any, n_tiles: int,
                    n_workers: int) -> tuple[Any, Callable[[], None], bool]:
    """``(client or None, close, in_process)`` for ``scheduler`` and ``n_tiles`` tiles.

    ``scheduler``: ``None`` or ``"threads"``: in-process for one tile, else a
    new in-process ``LocalCluster`` with ``n_workers`` threads (the tile work
    releases the GIL). ``"processes"``: a ``LocalCluster`` of ``n_workers``
    processes with one thread each. ``"synchronous"``: all tiles in this
    process, one after another. A scheduler address or a ``distributed.Client``:
    use that cluster (workers must see the file and the temp dir).

    ``in_process`` is True when tile results can be handed back as arrays
    (no pickling to other processes).
    """
    if scheduler is None and n_tiles == 1:
        client, close = None, (lambda: None)
    elif isinstance(scheduler, str) and scheduler == "synchronous":
        client, close = None, (lambda: None)
    else:
        client, close = _make_client(scheduler, n_workers)
    return client, close, scheduler is None or scheduler == "threads"


def scheduler_name(client: Any, scheduler: Any, in_process: bool, n_workers: int) -> str:
    """How the tiles ran, for the result parameters."""
    if client is None:
        return "in-process"
    if in_process:
        return f"LocalCluster(1 in-process worker x {n_workers} threads)"
    if scheduler == "processes":
        return f"LocalCluster({n_workers} processes x 1 thread)"
    return scheduler if isinstance(scheduler, str) else "distributed.Client"


def _make_client(scheduler: Any, n_workers: int) -> tuple[Any, Callable[[], None]]:
    """A distributed Client (and how to close what we opened)."""
    import distributed

    if isinstance(scheduler, distributed.Client):
        return scheduler, lambda: None
    import logging

    if scheduler is None or (isinstance(scheduler, str) and scheduler == "threads"):
        # The default: one in-process worker with a thread per core. The tile
        # work releases the GIL (scipy.ndimage, numba nogil kernels, codecs), so
        # threads use both cores without worker start-up, pickling of tiles or
        # the __main__ guard that spawned processes need in user scripts.
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=int(n_workers),
                                           processes=False, dashboard_address=None,
                                           silence_logs=logging.ERROR)
        return _client_of(cluster)
    if isinstance(scheduler, str) and scheduler != "processes":
        client = distributed.Client(scheduler)
        return client, client.close

    import dask

    # Workers start without distributed's MALLOC_TRIM_THRESHOLD_: setting it at all
    # turns off glibc's adaptive mmap threshold, so every tile-sized temporary
    # is a fresh mmap that is page-faulted in again (measured: +15 % CPU per tile).
    # A worker keeps its tile-sized high-water mark instead, which is bounded.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    # One thread per worker process, and no hidden BLAS/numba thread pools.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = distributed.LocalCluster(n_workers=int(n_workers), threads_per_worker=1,
                                           processes=True, dashboard_address=None,
                                           silence_logs=logging.ERROR,
                                           env={"OMP_NUM_THREADS": "1",
                                                "OPENBLAS_NUM_THREADS": "1",
                                                "MKL_NUM_THREADS": "1",
                                                "NUMBA_NUM_THREADS": "1"})
    return _client_of(cluster)


def _client_of(cluster: Any) -> tuple[Any, Callable[[], None]]:
    """A Client on a cluster we started, and how to close both."""
    import distributed

    client = distributed.Client(cluster)

    def _close() -> None:
        client.close()
        cluster.close()

    return client, _close


def run_tasks(fn: Callable, arg_list: list[tuple], client: Any, step: str,
              progress: Any, on_result: Optional[Callable[[int, Any], Any]] = None) -> list[Any]:
    """Run ``fn(*args)`` for each args, in-process or on ``client``; results in order.

    ``on_result(k, result)``, when given, is called in this thread as each
    task finishes (in completion order) and its return value is kept in
    place of the result, so large results can be consumed (e.g. written to
    disk) as they arrive instead of being held until the end.
    """
    total = len(arg_list)
    out: list[Any] = [None] * total
    keep = on_result if on_result is not None else (lambda k, r: r)
    report(progress, step, 0, total)
    if client is None:
        for k, args in enumerate(arg_list):
            out[k] = keep(k, fn(*args))
            report(progress, step, k + 1, total)
        return out
    import distributed

    futures = [client.submit(fn, *args, pure=False, key=f"{step.replace(' ', '-')}-{k}-"
                             f"{os.getpid()}-{time.time_ns()}")
               for k, args in enumerate(arg_list)]
    pos = {f.key: k for k, f in enumerate(futures)}
    done = 0
    try:
        for fut in distributed.as_completed(futures):
            res = fut.result()
            fut.release()
            out[pos[fut.key]] = keep(pos[fut.key], res)
            del res
            done += 1
            report(progress, step, done, total)
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return out
