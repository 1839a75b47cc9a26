"""Progress reporting shared by the CLI (tqdm bars) and napari (status bar).

Long-running functions take ``progress=None`` or a callable
``progress(step: str, done: int, total: int)``; they call it as work advances.
The CLI passes :func:`tqdm_progress`, the napari widget a callback that
forwards to its thread worker, the API default is silent.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol


class ProgressCallback(Protocol):
    def __call__(self, step: str, done: int, total: int) -> None: ...


def report(progress: Optional[ProgressCallback], step: str, done: int, total: int) -> None:
    """Call ``progress`` if given (keeps call sites one line)."""
    if progress is not None:
        progress(step, done, total)


def tqdm_progress(disable: bool = False, stream=None) -> Callable[[str, int, int], None]:
    """A progress callback for the CLI.

    On a terminal: one tqdm bar per step (count, elapsed and remaining time).
    Elsewhere (a log file, CI): one plain line per finished step with its
    count and time, e.g. ``segmentation: 16/16 in 12.3 s``.
    """
    import sys
    import time

    stream = sys.stderr if stream is None else stream
    if disable:
        return lambda step, done, total: None
    if not getattr(stream, "isatty", lambda: False)():
        started: dict[str, float] = {}
        finished: set[str] = set()

        def _line(step: str, done: int, total: int) -> None:
            t0 = started.setdefault(step, time.perf_counter())
            if done >= total and step not in finished:
                finished.add(step)
                print(f"{step}: {done:,}/{total:,} in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
            elif done < total:
                finished.discard(step)

        return _line

    from tqdm.auto import tqdm

    bars: dict[str, "tqdm"] = {}

    def _cb(step: str, done: int, total: int) -> None:
        bar = bars.get(step)
        if bar is None:
            # Close the bars of previous steps so output stays tidy.
            for other in list(bars.values()):
                other.close()
            bar = bars[step] = tqdm(total=total, desc=step, leave=True, file=stream, dynamic_ncols=True,
                                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                               "[{elapsed}<{remaining}]")
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return _cb
