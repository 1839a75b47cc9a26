"""Perimeter segments: every nest boundary ring cut into pieces of equal arc
length (µm), and the exact nearest segment of each point.

Rings start at their vertex with the smallest (y, x) and run in the nests'
orientation (tumour on the left in (x, y) numbers); consecutive positions
along a ring are neighbours (circularly).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from tibspace.errors import InputError
from tibspace.tissue._segindex import _SegmentIndex
from tibspace.tissue.nests import TumourRegion, _polygons_of, _xy

_SEGMENT_COLUMNS = ["segment_id", "nest_id", "ring", "position", "start_um", "end_um",
                    "length_um", "geometry"]


def _ring_start_normalised(coords):
    """Closed ring coords rotated to start at the vertex with the smallest (y, x)."""
    c = coords[:-1]
    i = int(np.lexsort((c[:, 0], c[:, 1]))[0])
    c = np.roll(c, -i, axis=0)
    return np.vstack([c, c[:1]])


def _cut_ring(coords, n):
    """Cut a closed ring into n pieces of equal arc length -> (coords, index, starts, ends).

    Vectorised: piece s runs from cut point s through the ring vertices strictly
    between the two cuts (by arc length) to cut point s + 1.
    """
    seg = np.diff(coords, axis=0)
    sl = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.r_[0.0, np.cumsum(sl)]
    L = cum[-1]
    cuts = L * np.arange(n + 1) / n
    cuts[-1] = L
    # interpolated cut points
    j = np.clip(np.searchsorted(cum, cuts, side="right") - 1, 0, len(sl) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(sl[j] > 0, (cuts - cum[j]) / sl[j], 0.0)
    cp = coords[j] + f[:, None] * seg[j]
    lo = np.searchsorted(cum, cuts[:-1], side="right")   # first vertex with cum > cut s
    hi = np.searchsorted(cum, cuts[1:], side="left")     # first vertex with cum >= cut s + 1
    inner = np.maximum(hi - lo, 0)
    size = inner + 2
    first = np.r_[0, np.cumsum(size)[:-1]]
    out = np.empty((int(size.sum()), 2))
    out[first] = cp[:-1]
    out[first + size - 1] = cp[1:]
    if inner.sum():
        pos = np.repeat(first + 1 - np.r_[0, np.cumsum(inner)[:-1]], inner) + np.arange(int(inner.sum()))
        src = np.repeat(lo - np.r_[0, np.cumsum(inner)[:-1]], inner) + np.arange(int(inner.sum()))
        out[pos] = coords[src]
    return out, np.repeat(np.arange(n), size), cuts[:-1], cuts[1:]


def perimeter_segments(region: TumourRegion, segment_um: float = 50.0, *,
                       subdivide: int = 1) -> pd.DataFrame:
    """Cut every nest boundary ring into segments of equal arc length ≈ ``segment_um``.

    Each ring (exterior: ``ring`` 0, k-th hole: ``ring`` k) of length L gets
    ``max(1, round(L / segment_um))`` segments of length exactly L / n, so the
    lengths sum to the perimeter. ``subdivide=k`` cuts each of those segments
    into k equal sub-segments (``position // k`` is then the position of the
    parent segment, and the cut points of the parents are among the
    sub-segments' cut points). Rings start at their vertex with the
    smallest (y, x) and run in the orientation of the nests (exterior
    counter-clockwise in (x, y) numbers, holes clockwise: tumour on the left);
    ``position`` 0..n-1 along the ring, consecutive positions are neighbours
    and position n-1 neighbours 0.

    Returns
    -------
    DataFrame with columns ``segment_id`` (0..N-1, global), ``nest_id``,
    ``ring``, ``position``, ``start_um``, ``end_um`` (arc length from the
    ring start), ``length_um``, ``geometry`` (shapely LineString, µm).
    An empty region gives an empty table with these columns.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 100, 100)])
    >>> seg = perimeter_segments(reg, 50.0)
    >>> len(seg), float(seg["length_um"].sum())
    (8, 400.0)
    """
    if not (np.isfinite(segment_um) and segment_um > 0):
        raise InputError(f"segment_um={segment_um}: expected a positive arc length in µm")
    if int(subdivide) < 1:
        raise InputError(f"subdivide={subdivide}: expected an integer >= 1")
    if not isinstance(region, TumourRegion):
        region = TumourRegion.from_polygons(_polygons_of(region))
    all_coords, all_idx, rows = [], [], []
    offset = 0
    for nid, poly in zip(region.nest_ids(), region.nests):
        poly = shapely.orient_polygons(poly)
        for ring_no, ring in enumerate([poly.exterior, *poly.interiors]):
            c = _ring_start_normalised(shapely.get_coordinates(ring))
            L = float(np.hypot(*np.diff(c, axis=0).T).sum())
            n = max(1, int(round(L / segment_um))) * int(subdivide)
            pc, pidx, st, en = _cut_ring(c, n)
            all_coords.append(pc); all_idx.append(pidx + offset)
            rows.append(pd.DataFrame({"nest_id": nid, "ring": ring_no, "position": np.arange(n),
                                      "start_um": st, "end_um": en, "length_um": en - st}))
            offset += n
    if not rows:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            _SEGMENT_COLUMNS, ["int64", "int64", "int64", "int64", "float64", "float64", "float64",
                               "object"])})
        return df
    df = pd.concat(rows, ignore_index=True)
    df.insert(0, "segment_id", np.arange(len(df), dtype=np.int64))
    df["geometry"] = shapely.linestrings(np.vstack(all_coords), indices=np.concatenate(all_idx))
    for c in ("nest_id", "ring", "position"):
        df[c] = df[c].astype(np.int64)
    return df


def _segment_index(segments: pd.DataFrame) -> _SegmentIndex:
    if "geometry" not in segments.columns or "segment_id" not in segments.columns:
        raise InputError("segments: expected the table from perimeter_segments (columns "
                         "segment_id, geometry)")
    return _SegmentIndex.from_lines(segments["geometry"].to_numpy(), segments["segment_id"].to_numpy())


def assign_segments(x_um, y_um, segments: pd.DataFrame) -> np.ndarray:
    """``segment_id`` of the perimeter segment nearest to each point (int64).

    Exact nearest (same certified search as :func:`signed_distance_um`;
    agrees with ``shapely.STRtree.query_nearest`` up to exact ties).
    Empty points -> empty array; no segments -> all -1.

    Examples
    --------
    >>> reg = TumourRegion.from_polygons([shapely.box(0, 0, 100, 100)])
    >>> seg = perimeter_segments(reg, 50.0)   # starts at (0, 0), runs +x first
    >>> assign_segments([10, 90], [-5, -5], seg).tolist()
    [0, 1]
    """
    x, y = _xy(x_um, y_um)
    if x.size == 0:
        return np.empty(0, dtype=np.int64)
    if len(segments) == 0:
        return np.full(x.size, -1, dtype=np.int64)
    idx = _segment_index(segments)
    _, s = idx.query(x, y)
    return idx.labels[s].astype(np.int64)
