"""Thread safety of the statistics by design (issue 13, item 1).

The pipeline runs the statistics in a background thread while the main thread
works on the tissue polygon. GEOS prepared geometries are not thread-safe
(libgeos/geos#825), so a statistic must never prepare the caller's geometry in
place, and its memos must hold no shapely object. These tests share ONE
polygon object between threads and check that results are the single-thread
ones, that nothing crashes (in a subprocess, so that a segfault or an abort
fails the test instead of killing pytest), and that the caller's polygon is
left unprepared.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from tibspace.stats import (circle_fraction_in_window, cross_l, cross_l_all_pairs, g_cross, pair_correlation,
                            random_labelling_envelope, ripley_k, set_covariance)

ROOT = Path(__file__).resolve().parents[1]

_RACE = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import shapely
    from shapely.geometry import Point, box
    from tibspace.stats import circle_fraction_in_window, cross_l, g_cross
    from tibspace.stats.windows import _as_window, _check_inside

    n_threads, n_iter = int(sys.argv[1]), int(sys.argv[2])
    base = Point(300, 300).buffer(290, 64).difference(box(250, 100, 330, 380))
    # one fresh polygon object per iteration, shared by all threads in that iteration
    # (a fresh geometry is where GEOS builds its prepared index lazily, under the race)
    polys = [shapely.from_wkb(shapely.to_wkb(base)) for _ in range(n_iter)]
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 600, 3000), rng.uniform(0, 600, 3000)
    inside = shapely.contains_xy(shapely.from_wkb(shapely.to_wkb(base)), x, y)
    xa, ya, xb, yb = x[inside][::2], y[inside][::2], x[inside][1::2], y[inside][1::2]
    radii = np.array([5.0, 10.0, 20.0, 40.0])

    def compute(k, poly):
        # k varies the point sets, so that memo entries are replaced under the other threads
        s = slice(k % 3, None)
        return (_check_inside(_as_window(poly), x, y, "drop"),
                cross_l(xa[s], ya[s], xb, yb, radii, poly),
                cross_l(xa[s], ya[s], xb, yb, radii, poly, edge_correction="translation"),
                circle_fraction_in_window(xa[s], ya[s], 15.0, poly),
                g_cross(xa[s], ya[s], xb, yb, radii, window=poly))

    ref = [compute(k, shapely.from_wkb(shapely.to_wkb(base))) for k in range(3)]
    bad = []
    barrier = threading.Barrier(n_threads)

    def work(t):
        try:
            for i in range(n_iter):
                barrier.wait()
                k = (t + i) % 3
                for got, want in zip(compute(k, polys[i]), ref[k]):
                    if not np.array_equal(got, want, equal_nan=True):
                        bad.append((t, i))
        except Exception as e:   # a failure in a thread must fail the run
            bad.append(repr(e))
            barrier.abort()

    def main_thread_geometry():
        # what the pipeline's main thread does meanwhile: GEOS predicates on the same
        # polygons, which use a prepared geometry (and race) if anyone prepared them
        # (not intersects_xy / contains_xy: shapely >= 2.1 prepares their geometry in place)
        pts = shapely.points(x[:1000], y[:1000])
        for _ in range(20):
            for poly in polys:
                shapely.contains(poly, pts)
                shapely.intersects(poly, pts[:200])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    threads += [threading.Thread(target=main_thread_geometry) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not bad, bad[:5]
    assert not any(shapely.is_prepared(p) for p in polys), "a caller's polygon was prepared in place"
    print("ok")
""")


def test_threads_sharing_one_polygon_get_single_thread_results():
    """Three threads call cross-L, the circle fractions, G-cross and the window
    helpers on the SAME polygon object while a fourth reads it with GEOS:
    every result equals the single-thread one and the process does not crash
    (the former in-place ``shapely.prepare`` aborted with 'double free or
    corruption' under this load)."""
    r = subprocess.run([sys.executable, "-c", _RACE, "3", "25"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert r.stdout.strip().endswith("ok")


def _cells_in(poly, n=3000, seed=1):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 600, n), rng.uniform(0, 600, n)
    m = shapely.contains_xy(shapely.from_wkb(shapely.to_wkb(poly)), x, y)
    ph = rng.choice(["A", "B", "C"], int(m.sum()))
    return pd.DataFrame({"x_um": x[m], "y_um": y[m], "phenotype": ph})


def _poly():
    return Point(300, 300).buffer(290, 64).difference(box(250, 100, 330, 380))


def _calls():
    radii = [5.0, 10.0, 20.0]
    return {
        "ripley_k": lambda c, W: ripley_k(c.x_um, c.y_um, radii, W),
        "cross_l": lambda c, W: cross_l(c.x_um[::2], c.y_um[::2], c.x_um[1::2], c.y_um[1::2], radii, W),
        "pair_correlation": lambda c, W: pair_correlation(c.x_um, c.y_um, radii, W),
        "g_cross": lambda c, W: g_cross(c.x_um[::2], c.y_um[::2], c.x_um[1::2], c.y_um[1::2], radii, window=W),
        "cross_l_all_pairs": lambda c, W: cross_l_all_pairs(c, radii, W, edge_correction="translation"),
        "random_labelling_envelope": lambda c, W: random_labelling_envelope(c, "cross_L", "A", "B", radii, W,
                                                                            n_sim=9),
        "circle_fraction_in_window": lambda c, W: circle_fraction_in_window(c.x_um, c.y_um, 12.0, W),
        "set_covariance": lambda c, W: set_covariance(W, 20.0),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_caller_polygon_is_not_prepared(name):
    W = _poly()
    cells = _cells_in(W)
    _calls()[name](cells, W)
    assert not shapely.is_prepared(W)


def test_memos_hold_read_only_numpy_and_no_geometry():
    from tibspace.stats.edge_correction import _SETUP_MEMO
    from tibspace.stats.windows import _INSIDE_MEMO

    W = _poly()
    cells = _cells_in(W)
    _SETUP_MEMO.clear()
    _INSIDE_MEMO.clear()
    cross_l_all_pairs(cells, [5.0, 10.0, 20.0], W)
    values = list(_INSIDE_MEMO._items.values()) + list(_SETUP_MEMO._items.values())
    assert len(values) == 2
    for v in values:
        parts = [getattr(v, f.name) for f in dataclasses.fields(v)] if dataclasses.is_dataclass(v) else [v]
        for p in parts:
            assert not isinstance(p, BaseGeometry)
            assert isinstance(p, (np.ndarray, int, float))
            if isinstance(p, np.ndarray):
                assert not p.flags.writeable
                with pytest.raises(ValueError):
                    p.flat[0] = 0
    for key in list(_INSIDE_MEMO._items) + list(_SETUP_MEMO._items):
        assert all(isinstance(k, (bytes, str, float)) for k in key)


def test_memo_hits_an_equal_copy_of_the_window(monkeypatch):
    """Memos are keyed by content: a copy of the polygon (as the pipeline hands
    each thread) reuses the setup, with identical results."""
    from tibspace.stats import edge_correction as ec

    W = _poly()
    cells = _cells_in(W)
    radii = [5.0, 10.0, 20.0]
    ec._SETUP_MEMO.clear()
    direct = random_labelling_envelope(cells, "cross_L", "A", "B", radii, W, n_sim=9, population="all")
    ec._SETUP_MEMO.clear()
    cross_l_all_pairs(cells, radii, W)
    calls = []
    real = ec._compute_edge_setup
    monkeypatch.setattr(ec, "_compute_edge_setup", lambda *a, **k: calls.append(1) or real(*a, **k))
    copy = shapely.from_wkb(shapely.to_wkb(W))
    assert copy is not W
    got = random_labelling_envelope(cells, "cross_L", "A", "B", radii, copy, n_sim=9, population="all")
    pd.testing.assert_frame_equal(got, direct, check_exact=True)
    assert calls == []
    # another window (same points): computed afresh
    random_labelling_envelope(cells, "cross_L", "A", "B", radii, W.buffer(1.0), n_sim=9, population="all")
    assert calls == [1]


def test_window_copy_is_bit_identical():
    """The window's private copy has the caller's coordinates bit for bit (same areas, same inside tests)."""
    from tibspace.stats.windows import _as_window

    W = _poly().union(box(700, 0, 760, 50))
    w = _as_window(W)
    assert w.geom is not W and shapely.is_prepared(w.geom) and not shapely.is_prepared(W)
    np.testing.assert_array_equal(shapely.get_coordinates(w.geom), shapely.get_coordinates(W))
    assert w.area == W.area and w.bounds == W.bounds
    assert _as_window(shapely.from_wkb(shapely.to_wkb(W))).key == w.key != _as_window(W.buffer(1e-9)).key
