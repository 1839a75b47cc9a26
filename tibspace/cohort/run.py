"""Run a cohort: every sample as a task on a Dask cluster, with resume and isolation.

Each sample runs :func:`tibspace.run_image` or :func:`tibspace.analyze_table`
in a worker and writes ``DIR/<sample>/`` as one result set (swapped in whole).
A sample whose result carries the same *run key* — SHA-256 of its input
files, the panel, the seed and the tibspace version — is not run again unless
``force``. A failed sample is recorded with its one-line error in
``DIR/cohort_status.csv`` and the others go on; Dask re-runs a task whose
worker died (``retries``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from tibspace.cohort.manifest import Sample
from tibspace.cohort.workers import cohort_client
from tibspace.errors import InputError, TibspaceError

RUN_KEY_FILE = "tibspace_run_key.json"
STATUS_COLUMNS = ["sample_id", "patient_id", "status", "error", "seconds", "result"]


@dataclass
class SampleStatus:
    sample_id: str
    patient_id: str
    status: str          # "done" | "cached" | "failed"
    error: str = ""
    seconds: float = 0.0
    result: str = ""


def _path_sha256(p, file_sha256) -> str:
    """sha256 of a file, or of every file of a folder (an MCMICRO / steinbock labels folder)."""
    from tibspace.io import split_element

    p = split_element(p)[0]
    if not p.is_dir():
        return file_sha256(p)
    return hashlib.sha256("".join(f"{q.relative_to(p)}:{file_sha256(q)}"
                                  for q in sorted(p.rglob("*")) if q.is_file()).encode()).hexdigest()


def run_key(sample: Sample, panel_text: str, seed: int | None, options: str = "") -> str:
    """SHA-256 over what decides a sample's result (inputs, panel, seed, version, output options)."""
    from tibspace import __version__
    from tibspace.outputs import file_sha256

    h = hashlib.sha256()
    for p in (sample.image, sample.table, sample.labels):
        h.update(b"|" + (_path_sha256(p, file_sha256).encode() if p is not None else b"-"))
    h.update(panel_text.encode())
    h.update(f"|seed={seed}|tibspace={__version__}|{options}".encode())
    return h.hexdigest()


def _finished(out: Path, key: str) -> bool:
    try:
        return json.loads((out / RUN_KEY_FILE).read_text())["run_key"] == key
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_sample(sample: Sample, panel_text: str, out: str, key: str | None, seed: int | None,
               segmentation: str = "worker", spatialdata: bool = False, force: bool = True,
               max_pixels: int | None = None, pdf: bool = False) -> SampleStatus:
    """Run one sample into ``out`` (a Dask task; also callable in-process).

    ``key`` None: the run key is computed here, where the inputs are read
    anyway (the client then never reads the slides), and a result that
    already carries it is kept (``cached``) unless ``force``. Never raises:
    any failure becomes a ``failed`` status with one line. Returns only
    this small status; the sample's files are written by the task itself.
    ``segmentation="worker"`` lets the image's tiles spread over the cluster
    (a client from inside the task); ``"local"`` segments in this process.
    ``pdf``: also print the sample's ``report.pdf`` (not part of the run key).
    """
    import tomllib

    from tibspace.cells import Panel
    from tibspace.pipeline import analyze_table

    t0 = time.perf_counter()
    status = SampleStatus(sample.sample_id, sample.patient_id, "failed")
    try:
        for p in (sample.image, sample.table, sample.labels):
            if p is not None and not os.path.exists(p):
                raise InputError(f"{p}: not visible from worker on {os.uname().nodename} "
                                 "(every worker needs the same file paths)")
        if key is None:
            key = run_key(sample, panel_text, seed, options=_options(spatialdata))
            if not force and _finished(Path(out), key):
                status.status, status.result = "cached", str(out)
                return status
        panel = Panel.from_dict(tomllib.loads(panel_text))
        if sample.table is not None:
            analyze_table(sample.table, panel, out_dir=out, seed=seed, sample_id=sample.sample_id,
                          extra_files={RUN_KEY_FILE: json.dumps({"run_key": key}) + "\n"}, spatialdata=spatialdata,
                          pdf=pdf)
        else:
            _run_image_task(sample, panel, out, key, seed, segmentation, spatialdata, max_pixels, pdf)
        status.status, status.result = "done", str(out)
    except TibspaceError as exc:
        status.error = str(exc).splitlines()[0]
    except Exception as exc:  # an isolated sample never stops the cohort
        status.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        status.seconds = round(time.perf_counter() - t0, 3)
    return status


def _options(spatialdata: bool) -> str:
    return "spatialdata" if spatialdata else ""


def _run_image_task(sample, panel, out, key, seed, segmentation, spatialdata, max_pixels=None, pdf=False):
    from tibspace.pipeline import run_image

    kwargs = dict(out_dir=out, seed=seed, sample_id=sample.sample_id, spatialdata=spatialdata, pdf=pdf,
                  extra_files={RUN_KEY_FILE: json.dumps({"run_key": key}) + "\n"})
    if sample.labels is not None:
        kwargs["labels"] = sample.labels
    if max_pixels is not None:  # else run_image's default limit
        kwargs["max_pixels"] = max_pixels
    if segmentation == "worker":
        import distributed

        try:
            with distributed.worker_client(separate_thread=True) as client:
                return run_image(sample.image, panel, scheduler=client, **kwargs)
        except ValueError:  # not inside a worker (in-process run)
            pass
    return run_image(sample.image, panel, scheduler="synchronous", **kwargs)


def run_cohort(samples: Sequence[Sample], panel_path: str | Path, out_dir: str | Path, *,
               scheduler: str | None = None, n_workers: int | None = None, seed: int | None = None,
               force: bool = False, progress: Callable[[str], None] | None = None,
               spatialdata: bool = False, max_pixels: int | None = None, pdf: bool = False) -> pd.DataFrame:
    """Run every sample (see module docstring); returns the status table.

    Parameters
    ----------
    scheduler : None, "synchronous" or a Dask scheduler address
        None: a local cluster of ``n_workers`` processes (default: the
        machine's cores); "synchronous": one sample after another in this
        process; ``tcp://host:8786``: a running cluster.
    pdf : bool
        Each sample run also prints its ``report.pdf`` (samples found done are
        left as they are: :func:`tibspace.cohort.report.print_sample_pdfs`).
    """
    from tibspace.cells import load_panel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panel_text = load_panel(panel_path).to_toml()
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    todo, statuses = _cached_or_todo(samples, panel_text, seed, out_dir, force, _options(spatialdata))
    if statuses:
        say(f"{len(statuses)} of {len(samples)} samples already done with the same inputs, panel and seed "
            "(--force runs them again)")
    statuses += _execute(todo, panel_text, seed, scheduler, n_workers, say, len(statuses), len(samples),
                         spatialdata, force, max_pixels, pdf)
    table = pd.DataFrame([s.__dict__ for s in statuses], columns=STATUS_COLUMNS)
    order = {s.sample_id: i for i, s in enumerate(samples)}
    table = table.sort_values("sample_id", key=lambda c: c.map(order)).reset_index(drop=True)
    from tibspace.outputs import write_table

    write_table(table, out_dir / "cohort_status", formats=("csv",))
    return table


def _cached_or_todo(samples, panel_text, seed, out_dir: Path, force: bool, options: str):
    """(to run: ``(sample, key or None, folder)``, cached statuses).

    Only a folder that holds a run key is checked here (its inputs hashed, in
    threads: hashlib releases the GIL); a sample without a result goes to its
    worker with ``key=None`` and is hashed there.
    """
    from concurrent.futures import ThreadPoolExecutor

    claimed = [s for s in samples if not force and (out_dir / s.folder / RUN_KEY_FILE).exists()]
    with ThreadPoolExecutor(4) as ex:
        keys = dict(zip([s.sample_id for s in claimed],
                        ex.map(lambda s: run_key(s, panel_text, seed, options=options), claimed)))
    todo, cached = [], []
    for s in samples:
        target = out_dir / s.folder
        key = keys.get(s.sample_id)
        if key is not None and _finished(target, key):
            cached.append(SampleStatus(s.sample_id, s.patient_id, "cached", result=str(target)))
        else:
            todo.append((s, key, target))
    return todo, cached


def _execute(todo, panel_text, seed, scheduler, n_workers, say, n_done, n_total, spatialdata=False, force=False,
             max_pixels=None, pdf=False):
    if not todo:
        return []
    t0 = time.perf_counter()
    done: list[SampleStatus] = []

    def tick(st: SampleStatus):
        done.append(st)
        k = n_done + len(done)
        per = (time.perf_counter() - t0) / len(done)
        eta = per * (len(todo) - len(done))
        say(f"sample {k}/{n_total} {st.sample_id}: {st.status}"
            + (f" ({st.error})" if st.error else "") + f" in {st.seconds:.1f} s; ETA {eta:.0f} s")

    if scheduler == "synchronous":
        for s, key, target in todo:
            say(f"sample {n_done + len(done) + 1}/{n_total} {s.sample_id}: running")
            tick(run_sample(s, panel_text, str(target), key, seed, segmentation="local", spatialdata=spatialdata,
                            force=force, max_pixels=max_pixels, pdf=pdf))
        return done
    client, close = cohort_client(scheduler, n_workers)
    try:
        from distributed import as_completed

        futures = [client.submit(run_sample, s, panel_text, str(target), key, seed, spatialdata=spatialdata,
                                 force=force, max_pixels=max_pixels, pdf=pdf,
                                 key=f"sample-{s.folder}-{uuid.uuid4().hex[:12]}", retries=2, pure=False)
                   for s, key, target in todo]
        for fut in as_completed(futures):
            tick(_result_or_failure(fut, todo[futures.index(fut)][0]))
    finally:
        close()
    return done


def _result_or_failure(fut, sample: Sample) -> SampleStatus:
    try:
        return fut.result()
    except Exception as exc:  # the task itself never raises: a worker that died past its retries
        return SampleStatus(sample.sample_id, sample.patient_id, "failed",
                            error=f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
