"""Shield masks against the planted masks of the synthetic generator, per scenario and seed.

Usage (from the repository root)::

    PYTHONPATH=. python docs/validation/shield_masks_eval.py [--seeds 10] [--size 1000]
        [--only flat gradient uneven speckle absent_col1] [--background-um 25] [--out rows.json]

Masks come from :func:`tibspace.analyses.shield_masks` with the generator's
panel specs (``otsu`` gates, 5 µm² objects); cells, labels and nests are the
planted ones, so the numbers isolate the masks. Per seed:

- ``net_precision`` / ``net_recall``, ``col1_precision`` / ``col1_recall``:
  with a 2-pixel tolerance (the PSF blurs, fibres are thin), NET outside
  neutrophil bodies (they are CitH3+ MPO+ by the mask rule; the planted NET
  mask holds extracellular traps only), as ``tests/test_shield.py`` scores them;
- ``net_area`` / ``col1_area``: mask area fraction of the image;
- ``max_nest_err``: max over nests of |measured − planted shielded fraction|
  of the nest's tumour cells; ``accuracy``: shielded-cell accuracy.

Scenarios (planted shield fraction cycles over seeds where two are listed):

- ``flat``: the default generator, planted 0.3 / 0.6 / 0.9;
- ``gradient``: ``illumination_gradient=1.5, autofluorescence=2, af_speckles_per_mm2=200``
  (the knobs of ``benchmarks/validate_world.py --only shield_gradient``), 0.3 / 0.6;
- ``uneven``: an independent background model (``tests/_shield_uneven.py``:
  additive ramp 1.5 × mean signal, 100 µm blotches, 1 µm speckle), 0.3;
- ``speckle``: ``af_speckles_per_mm2=2000`` (granules in every channel), 0.3;
- ``absent_col1``: ``absent_markers=("COL1",)``: no collagen stain, 0.3
  (the COL1 mask should stay empty; its precision is undefined);
- ``speckle_big``: as ``speckle`` with granules of 2.5-4 µm radius instead of
  the generator's 0.8-1.6 µm (``SPECKLE_RADIUS_UM`` patched): larger than the
  5 µm² small-object limit, so only the autofluorescence signature can
  reject them;
- ``three_channel``: the default generator with only the CitH3, MPO and COL1
  channels given to the masks (a stain-only export), 0.3 / 0.6.

``--af-off`` passes ``af_reject=False`` (the rule before the autofluorescence
test). Each row also carries the recorded decisions (``decisions``).

Prints one line per scenario (median and worst per number) and writes the
rows as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PX = 0.6
SPECS = {"net": {"channels": ["CitH3"], "require": ["MPO"], "gate": "otsu", "min_object_um2": 5.0},
         "col1": {"channels": ["COL1"], "gate": "otsu", "min_object_um2": 5.0}}
SCENARIOS = {
    "flat": ((0.3, 0.6, 0.9), {}),
    "gradient": ((0.3, 0.6), {"illumination_gradient": 1.5, "autofluorescence": 2.0, "af_speckles_per_mm2": 200.0}),
    "uneven": ((0.3,), {}),
    "speckle": ((0.3,), {"af_speckles_per_mm2": 2000.0}),
    "absent_col1": ((0.3,), {"absent_markers": ("COL1",)}),
    "speckle_big": ((0.3,), {"af_speckles_per_mm2": 2000.0}),
    "three_channel": ((0.3, 0.6), {}),
}
BIG_SPECKLE_RADIUS_UM = (2.5, 4.0)


def precision_recall(m: np.ndarray, ref: np.ndarray, tol_px: int = 2) -> tuple[float, float]:
    """Pixel precision and recall of mask ``m`` against ``ref`` with a tolerance of ``tol_px`` pixels."""
    near_ref = ndi.binary_dilation(ref, iterations=tol_px)
    near_m = ndi.binary_dilation(m, iterations=tol_px)
    p = float((m & near_ref).sum() / m.sum()) if m.any() else float("nan")
    r = float((ref & near_m).sum() / ref.sum()) if ref.any() else float("nan")
    return p, r


def one(name: str, seed: int, size: int, background_um: float, af_reject: bool = True) -> dict:
    """Scores of one scenario and seed."""
    from tibspace.analyses import shield_analysis, shield_masks
    from tibspace.synthetic import make_tissue, world
    from tibspace.tissue import TumourRegion

    covs, knobs = SCENARIOS[name]
    sc = covs[seed % len(covs)]
    radius = world.SPECKLE_RADIUS_UM
    if name == "speckle_big":
        world.SPECKLE_RADIUS_UM = BIG_SPECKLE_RADIUS_UM
    try:
        t = make_tissue((size, size), pixel_size_um=PX, seed=100 + seed, n_nests=3, nest_radius_um=(60.0, 100.0),
                        shield_coverage=sc, immune_phenotype="inflamed", **knobs)
    finally:
        world.SPECKLE_RADIUS_UM = radius
    image = t.image
    if name == "uneven":
        from _shield_uneven import add_uneven_background

        image = add_uneven_background(t, seed)
    ci = {c: k for k, c in enumerate(t.channel_names)}
    if name == "three_channel":
        keep = ["CitH3", "MPO", "COL1"]
        image = image[[ci[c] for c in keep]]
        ci = {c: k for k, c in enumerate(keep)}
    kw = {"background_um": background_um} if background_um is not None else {}
    kw.update(af_reject=False) if not af_reject else kw.update(return_decisions=True)
    out = shield_masks(image, SPECS, ci, PX, **kw)
    masks, gates = out[0], out[1]
    neu_ids = t.truth.loc[t.truth.phenotype == "neutrophil", "cell_id"].to_numpy()
    neu = ndi.binary_dilation(np.isin(t.cells, neu_ids), iterations=2)
    row = {"scenario": name, "seed": seed, "planted": sc}
    row["net_precision"], row["net_recall"] = precision_recall(masks["net"] & ~neu, t.net_mask & ~neu)
    col_ref = t.col1_mask if "COL1" not in knobs.get("absent_markers", ()) else np.zeros_like(t.col1_mask)
    row["col1_precision"], row["col1_recall"] = precision_recall(masks["col1"], col_ref)
    row["net_area"], row["col1_area"] = float(masks["net"].mean()), float(masks["col1"].mean())
    if "COL1" in knobs.get("absent_markers", ()):
        masks = {"net": masks["net"]}          # no collagen stain: shields from NETs only
    res = shield_analysis(t.truth, t.cells, masks, PX, TumourRegion.from_polygons(t.nests), tissue=t.tissue,
                          n_sim=9)
    tum = t.truth[t.truth.phenotype == "tumour"].set_index("cell_id")
    pc = res.per_cell.set_index("cell_id").reindex(tum.index)
    want = tum["shielded"].astype(bool)
    if "COL1" in knobs.get("absent_markers", ()):
        want = want & tum["shield_coverage_net"].ge(0.5)     # only NET shields can be seen
    got = pc["shielded"].fillna(False).astype(bool)
    row["accuracy"] = float((got == want).mean())
    errs = [abs(float(got[tum.nest_id == k].mean()) - float(want[tum.nest_id == k].mean()))
            for k in sorted(set(tum.nest_id)) if k > 0 and (tum.nest_id == k).sum() >= 10]
    row["max_nest_err"] = max(errs) if errs else float("nan")
    row["gates"] = gates
    row["decisions"] = out[2] if len(out) > 2 else None
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--background-um", type=float, default=None,
                    help="passed to shield_masks (0: raw intensities); default: shield_masks' own default")
    ap.add_argument("--af-off", action="store_true", help="af_reject=False (no autofluorescence test)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    for name in SCENARIOS:
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        these = [one(name, s, a.size, a.background_um, not a.af_off) for s in range(a.seeds)]
        rows += these
        keys = ["max_nest_err", "accuracy", "net_precision", "net_recall", "col1_precision", "col1_recall",
                "net_area", "col1_area"]
        parts = []
        for k in keys:
            v = np.array([r[k] for r in these], float)
            v = v[np.isfinite(v)]
            if v.size:
                worst = v.max() if k in ("max_nest_err", "net_area", "col1_area") else v.min()
                parts.append(f"{k} {np.median(v):.3f}/{worst:.3f}")
        print(f"{name:>12}: " + "; ".join(parts) + f"  (median/worst, {time.perf_counter() - t0:.0f} s)",
              flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
