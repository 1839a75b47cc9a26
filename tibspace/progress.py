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


def tqdm_progress(disable: bool = False) -> Callable[[str, int, int], None]:
    """A progress callback drawing one tqdm bar per step name (for the CLI)."""
    from tqdm.auto import tqdm

    bars: dict[str, "tqdm"] = {}

    def _cb(step: str, done: int, total: int) -> None:
        bar = bars.get(step)
        if bar is None:
            # Close the bars of previous steps so output stays tidy.
            for other in list(bars.values()):
                other.close()
            bar = bars[step] = tqdm(total=total, desc=step, unit="", leave=True,
                                    disable=disable, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return _cb
