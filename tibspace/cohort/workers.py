"""The cohort's Dask workers: a local cluster sized to the machine, or a client on a running one.

A sample is one task; each worker process runs one task at a time
(``threads_per_worker=1``) and its numerical thread pools (numba's parallel
kernels, OpenMP, BLAS) are sized to the worker's share of the cores
(``cores // n_workers``, at least 1), so ``n`` workers never run more busy
threads than there are cores. The pipeline's own helper threads (one
background analysis thread, one statistics thread) mostly wait on GEOS and
numba and are not counted.

Every worker imports the pipeline and the libraries its outputs need
(:data:`PRELOAD`) once, when it starts (:class:`WarmImports`), so that cost
overlaps with the client's set-up rather than with the first sample; numba's
kernels come from its on-disk cache (``cache=True``; ``NUMBA_CACHE_DIR`` is
passed on when set), never compiled per worker. Dask's statistical profiler,
which samples every thread's stack every 10 ms, is switched off in the
workers.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from tibspace.errors import InputError
from tibspace.heap import bound_heap, heap_environment

#: Modules a sample's run imports lazily; imported once per worker at start-up.
PRELOAD = ("tibspace.pipeline", "tibspace.cohort.run", "tibspace.outputs", "tibspace.outputs.report",
           "tibspace.outputs.anndata", "anndata", "pyarrow.parquet", "matplotlib.backends.backend_agg",
           "tibspace.stats._kernels", "tibspace.tissue._cellarea")


def machine_cores() -> int:
    """Cores this process may run on (CPU affinity, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_env(n_workers: int, cores: int | None = None) -> dict[str, str]:
    """Environment of each local worker process: thread pools sized to its share of the cores."""
    share = str(max(1, (cores or machine_cores()) // max(1, int(n_workers))))
    env = {"NUMBA_NUM_THREADS": share, "OMP_NUM_THREADS": share, "OPENBLAS_NUM_THREADS": share,
           "MKL_NUM_THREADS": share, "MPLBACKEND": "Agg"}
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    return env


def warm_imports(modules=PRELOAD) -> list[str]:
    """Import ``modules`` (those missing are skipped); returns the ones imported."""
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except ImportError:
            continue
    return done


def _plugin_class():
    import distributed

    class WarmImports(distributed.WorkerPlugin):
        """Imports :data:`PRELOAD` when a worker starts (also a worker restarted by its nanny)."""

        name = "tibspace-warm-imports"

        def setup(self, worker):
            bound_heap()
            warm_imports()

    return WarmImports


def _config() -> dict:
    """Dask settings of the workers we start (see module docstring)."""
    import dask

    # As for segmentation tiles (tibspace.segment.scheduler): no MALLOC_TRIM_THRESHOLD_,
    # which would turn off glibc's adaptive mmap threshold for every large temporary.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ.update(heap_environment())  # read by glibc when the worker process starts
    return {"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False}


def cohort_client(scheduler: str | None, n_workers: int | None) -> tuple[object, Callable[[], None]]:
    """``(client, close)``: a local cluster of ``n_workers`` processes (default: one per core),
    or a client on a running scheduler (``tcp://host:8786``); both get :class:`WarmImports`."""
    import dask
    import distributed

    if scheduler not in (None, "processes"):
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({str(exc).splitlines()[0]})") from None
        _register(client)
        return client, client.close
    n = int(n_workers or machine_cores())
    with dask.config.set(_config()):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40, env=worker_env(n))
    client = distributed.Client(cluster)
    _register(client)

    def close():
        client.close()
        cluster.close()

    return client, close


def _register(client) -> None:
    try:
        client.register_plugin(_plugin_class()())
    except Exception:  # noqa: BLE001 - a warm start is an optimisation, never a reason to fail
        pass
