"""Bounded memos of the band computations (results identical to recomputing).

- sublevel sets ``{d <= e}`` of a region (buffers of the nests), keyed by the
  region geometry's identity and ``e``, bounded by a total coordinate budget;
- nearest-segment partitions of the plane, keyed by a hash of the line
  coordinates (last 4 kept);
- per-label areas of one sublevel set in one partition, keyed by identity
  (last 16 kept).

All three are guarded by one lock; :func:`clear_geometry_cache` empties them.
"""

from __future__ import annotations

import threading

import numpy as np
import shapely

from tibspace.tissue.nests import TumourRegion, _geom

# Memo of {d <= e} sets: profiles, by-nest profiles, barrier and exclusion all
# ask for buffers of the same region at the same distances, and buffering
# scalloped nests dominates their cost. Pure memoisation (results identical);
# the cache holds a reference to the region geometry, so its id() cannot be
# reused while cached; bounded by a total coordinate budget.
_SUBLEVEL_CACHE: "dict" = {}


_SUBLEVEL_CACHE_MAX_COORDS = 8_000_000


_SUBLEVEL_LOCK = threading.Lock()


_PARTITION_CACHE: "dict" = {}


# Memo of per-region areas of one sublevel set {d <= e} in one partition: the
# inner (-w, 0] and outer (0, w] bands of the barrier analysis both need
# {d <= 0}. Entries hold references to the partition, tissue and region they
# were keyed on (by id), so a hit is checked by identity; bounded.
_AREA_CACHE: "dict" = {}


_AREA_CACHE_MAX = 16


def clear_geometry_cache() -> None:
    """Forget memoised region buffers (frees their memory)."""
    with _SUBLEVEL_LOCK:
        _SUBLEVEL_CACHE.clear()
        _PARTITION_CACHE.clear()
        _AREA_CACHE.clear()


def _sublevel_key(region, e, quad_segs):
    key_geom = region.union if isinstance(region, TumourRegion) else _geom(region)
    return key_geom, (id(key_geom), float(e), int(quad_segs))


def _cache_put(key, key_geom, res):
    with _SUBLEVEL_LOCK:
        _SUBLEVEL_CACHE[key] = (key_geom, res, int(shapely.get_num_coordinates(res)))
        while (sum(v[2] for v in _SUBLEVEL_CACHE.values()) > _SUBLEVEL_CACHE_MAX_COORDS
               and len(_SUBLEVEL_CACHE) > 1):
            _SUBLEVEL_CACHE.pop(next(iter(_SUBLEVEL_CACHE)))


def _partition_memo(kind, lines, extra, compute):
    """``compute()`` memoised under a hash of the line coordinates and ``extra``
    arrays (the barrier's bands share one partition of the same segments);
    keeps the last 4 partitions of any kind."""
    import hashlib

    coords, idx = shapely.get_coordinates(lines, return_index=True)
    h = hashlib.blake2b(digest_size=16)
    for a in (coords, idx, *extra):
        h.update(np.ascontiguousarray(a).tobytes())
    key = kind + ":" + h.hexdigest()
    with _SUBLEVEL_LOCK:
        hit = _PARTITION_CACHE.get(key)
    if hit is not None:
        return hit
    res = compute()
    with _SUBLEVEL_LOCK:
        _PARTITION_CACHE[key] = res
        while len(_PARTITION_CACHE) > 4:
            _PARTITION_CACHE.pop(next(iter(_PARTITION_CACHE)))
    return res


def _memo_set_areas(region, t, e, quad_segs, partition, n_out, compute):
    """``compute()`` memoised on (partition, tissue, region, e) by identity."""
    key_geom = region.union if isinstance(region, TumourRegion) else _geom(region)
    key = (id(partition), id(t), id(key_geom), float(e), int(quad_segs), int(n_out))
    with _SUBLEVEL_LOCK:
        hit = _AREA_CACHE.get(key)
    if hit is not None and hit[0] is partition and hit[1] is t and hit[2] is key_geom:
        return hit[3].copy()
    res = compute()
    with _SUBLEVEL_LOCK:
        _AREA_CACHE[key] = (partition, t, key_geom, res)
        while len(_AREA_CACHE) > _AREA_CACHE_MAX:
            _AREA_CACHE.pop(next(iter(_AREA_CACHE)))
    return res.copy()
