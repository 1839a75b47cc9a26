"""Figures of a result, shared by the HTML report and the napari results dock.

Each function draws into a given matplotlib ``Axes`` and returns it, so the
same picture appears in ``report.html`` and in napari.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tibspace.outputs.colours import STRUCTURE_COLOURS, phenotype_colour


def _rgb(c):
    return tuple(v / 255 for v in c)


def plot_infiltration_profile(profiles: pd.DataFrame, ax, *, phenotypes=None, title="Infiltration profile",
                              scale: str = "per_phenotype"):
    """Density against signed distance to the tumour boundary.

    ``scale="per_phenotype"`` (default) divides each phenotype's curve by its own
    maximum, so that a sparse population (CD8 T cells) is not squashed under a
    dense one (tumour cells); the maximum in cells/mm² is given in the legend.
    ``scale="absolute"`` plots cells/mm².
    """
    if profiles is None or len(profiles) == 0:
        ax.text(0.5, 0.5, "no tumour region: no profile", ha="center", va="center", transform=ax.transAxes)
        return ax
    df = profiles
    if "nest_id" in df.columns:
        df = df.groupby(["band_mid_um", "phenotype"], as_index=False)[["count", "area_um2"]].sum()
        df["density_per_mm2"] = df["count"] / df["area_um2"] * 1e6
    relative = scale == "per_phenotype"
    for ph in (phenotypes or sorted(df["phenotype"].unique())):
        sub = df[df["phenotype"] == ph].sort_values("band_mid_um")
        if len(sub) == 0 or sub["count"].sum() == 0:
            continue
        dens = sub["density_per_mm2"].to_numpy(dtype=float)
        peak = float(np.nanmax(dens)) if np.isfinite(dens).any() else 0.0
        yv = dens / peak if relative and peak > 0 else dens
        label = f"{ph} (max {peak:,.0f}/mm²)" if relative else ph
        ax.plot(sub["band_mid_um"], yv, marker="o", ms=3, lw=1.5, color=_rgb(phenotype_colour(ph)), label=label)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("signed distance to tumour boundary (µm; < 0 inside)")
    ax.set_ylabel("density / its maximum" if relative else "density (cells/mm²)")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_barrier_coverage(per_nest: pd.DataFrame, ax, *, title="Barrier coverage per nest", max_bars: int = 40):
    """Barrier coverage per nest: one bar per nest up to ``max_bars`` nests,
    beyond that the distribution (histogram weighted by perimeter), which stays
    readable for hundreds of nests."""
    if per_nest is None or len(per_nest) == 0 or "barrier_coverage" not in per_nest:
        ax.text(0.5, 0.5, "barrier analysis not run", ha="center", va="center", transform=ax.transAxes)
        return ax
    colour = _rgb(STRUCTURE_COLOURS["barrier_covered"])
    pn = per_nest.sort_values("nest_id")
    cov = pn["barrier_coverage"].to_numpy(dtype=float)
    if len(pn) <= max_bars:
        ax.bar(np.arange(len(pn)), cov, color=colour, tick_label=pn["nest_id"].astype(str).to_numpy())
        ax.set_ylim(0, 1)
        ax.set_xlabel("nest")
        ax.set_ylabel("barrier coverage (fraction of perimeter)")
    else:
        ok = np.isfinite(cov)
        w = pn["perimeter_um"].to_numpy(dtype=float)[ok] if "perimeter_um" in pn else None
        ax.hist(cov[ok], bins=np.linspace(0, 1, 21), weights=w, color=colour)
        ax.set_xlabel("barrier coverage (fraction of perimeter)")
        ax.set_ylabel("tumour perimeter (µm)" if w is not None else "nests")
        title = f"{title} ({int(ok.sum())} nests)"
    ax.set_title(title)
    return ax


def _outline_segments(geoms) -> list[np.ndarray]:
    """Every ring / line of ``geoms`` as an (n, 2) array, for one LineCollection."""
    import shapely

    arr = np.asarray([g for g in geoms if g is not None], dtype=object)
    if len(arr) == 0:
        return []
    parts = shapely.get_parts(arr)
    polys = parts[shapely.get_type_id(parts) == 3]
    lines = list(parts[np.isin(shapely.get_type_id(parts), (1, 2))])
    if len(polys):
        rings = shapely.get_rings(polys)
        lines += list(rings)
    lines = np.asarray(lines, dtype=object)
    if len(lines) == 0:
        return []
    lines = lines[~shapely.is_empty(lines)]
    # one call for every ring's coordinates (18,000 calls at 1M cells), split back per ring
    xy, which = shapely.get_coordinates(lines, return_index=True)
    return np.split(xy, np.flatnonzero(np.diff(which)) + 1) if len(xy) else []


def _cells_as_image(ax, cells, cols, px: int = 1000):
    """Many cells drawn as one image (a pixel per ~cell at the figure's resolution): as fast for
    10⁶ cells as for 10⁴, where a scatter of 10⁵ markers takes seconds."""
    x, y = cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float)
    x0, x1, y0, y1 = x.min(), x.max() + 1e-9, y.min(), y.max() + 1e-9
    step = max(x1 - x0, y1 - y0) / px
    nx, ny = int((x1 - x0) / step) + 1, int((y1 - y0) / step) + 1
    img = np.ones((ny, nx, 3))
    img[((y - y0) / step).astype(int), ((x - x0) / step).astype(int)] = cols
    ax.imshow(img, extent=(x0, x0 + nx * step, y0 + ny * step, y0), interpolation="nearest")


def plot_overview(result, ax, *, max_points: int = 200_000, seed: int = 0, max_labels: int = 60,
                  raster_above: int = 20_000):
    """Map of cells coloured by phenotype with nests, barrier segments and exclusion zones.

    One artist per layer (a scatter for the cells, one LineCollection per kind
    of outline), so the figure draws as fast for 1,000 nests as for 5; nest
    numbers are written when there are at most ``max_labels`` nests.
    """
    from matplotlib.collections import LineCollection

    cells = result.cells[["x_um", "y_um", "phenotype"]]  # only what is drawn: no take of every column
    if len(cells) > max_points:  # a seeded subsample keeps the figure light
        cells = cells.iloc[np.sort(np.random.default_rng(seed).choice(len(cells), max_points, replace=False))]
    ph = cells["phenotype"].astype(str).to_numpy()
    inverse, names = pd.factorize(ph, sort=True)  # np.unique's order, by hashing instead of a string sort
    names = np.asarray(names, dtype=str)
    palette = np.array([_rgb(phenotype_colour(p)) for p in names]).reshape(-1, 3)
    cols = palette[inverse] if len(ph) else np.zeros((0, 3))
    if len(cells) > raster_above:
        _cells_as_image(ax, cells, cols)
    else:
        # Marker about one cell (8 µm) wide at the figure's scale, but at least a dot.
        extent = max(float(np.ptp(cells["x_um"])) if len(cells) else 1.0, 1.0)
        width_pt = ax.figure.get_figwidth() * 72 * 0.8
        size = float(np.clip((8.0 * width_pt / extent) ** 2, 0.5, 30.0))
        ax.scatter(cells["x_um"], cells["y_um"], s=size, c=cols, linewidths=0, rasterized=True)

    def layer(geoms, **kw):
        segs = _outline_segments(geoms)
        if segs:
            ax.add_collection(LineCollection(segs, **kw))

    if result.region is not None:
        layer(result.region.nests, colors="k", linewidths=0.6)
        if result.region.n_nests <= max_labels:
            for i, p in enumerate(result.region.nests, start=1):
                c = p.representative_point()
                ax.text(c.x, c.y, str(i), fontsize=8, ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
    barrier = result.analyses.get("barrier")
    if barrier is not None:
        for attr, key in (("covered_geometry", "barrier_covered"), ("gap_geometry", "barrier_gap")):
            layer([getattr(barrier, attr, None)], colors=[_rgb(STRUCTURE_COLOURS[key])], linewidths=2.5)
    layer(result.exclusion_zones or [], colors=[_rgb(STRUCTURE_COLOURS["exclusion_zone"])], linewidths=1.0,
          linestyles="--")
    ax.set_aspect("equal")
    ax.autoscale_view()
    if not ax.yaxis_inverted():
        ax.invert_yaxis()  # y down, as in the image
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    from matplotlib.lines import Line2D

    # Legend proxies stay off the axes (the axes hold one artist per layer).
    handles = [Line2D([], [], ls="", marker="o", ms=3.5, mew=0, color=palette[k], label=p)
               for k, p in enumerate(names)]
    ax.legend(handles=handles, fontsize=7, loc="upper right", markerscale=1.5, frameon=True)
    ax.set_title("Cells, tumour nests (black), barrier covered (blue) / gaps (red), exclusion zones (yellow)",
                 fontsize=9)
    return ax


def _structure_layers(result, ax, *, nest_colour="k"):
    """Nest outlines, barrier covered/gap runs and exclusion zones as LineCollections."""
    from matplotlib.collections import LineCollection

    def layer(geoms, **kw):
        segs = _outline_segments(geoms)
        if segs:
            ax.add_collection(LineCollection(segs, **kw))

    if result.region is not None:
        layer(result.region.nests, colors=nest_colour, linewidths=0.8)
    barrier = (result.analyses or {}).get("barrier")
    if barrier is not None:
        for attr, key in (("covered_geometry", "barrier_covered"), ("gap_geometry", "barrier_gap")):
            layer([getattr(barrier, attr, None)], colors=[_rgb(STRUCTURE_COLOURS[key])], linewidths=2.0)
    layer(result.exclusion_zones or [], colors=[_rgb(STRUCTURE_COLOURS["exclusion_zone"])], linewidths=1.2,
          linestyles="--")


def plot_stain_overlay(result, ax):
    """The stain thumbnail (µm axes) with nests, barrier runs and exclusion zones drawn over it."""
    th = result.thumbnail
    if th is None:
        ax.text(0.5, 0.5, "no image (cell-table run)", ha="center", va="center", transform=ax.transAxes)
        return ax
    rgb, um = np.asarray(th["rgb"]), float(th["um_per_px"])
    h, w = rgb.shape[:2]
    ax.imshow(rgb, extent=(-um / 2, (w - 0.5) * um, (h - 0.5) * um, -um / 2), interpolation="nearest")
    _structure_layers(result, ax, nest_colour="white")
    ax.set_xlim(-um / 2, (w - 0.5) * um)
    ax.set_ylim((h - 0.5) * um, -um / 2)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    return ax


def plot_shields(result, axes):
    """Two panels: the tumour cells' ring-coverage distribution, and T-contact rates."""
    sh = (result.analyses or {}).get("shield")
    ax1, ax2 = axes
    cells = result.cells
    if sh is None or "shield_coverage" not in cells:
        ax1.text(0.5, 0.5, "shield analysis not run", ha="center", va="center", transform=ax1.transAxes)
        ax2.axis("off")
        return axes
    cov = cells["shield_coverage"].to_numpy(dtype=float)
    cov = cov[np.isfinite(cov)]
    ax1.hist(cov, bins=np.linspace(0, 1, 21), color=(0.55, 0.35, 0.7))
    thr = (result.metrics.get("parameters") or {}).get("shield_min_coverage")
    if thr is not None:
        ax1.axvline(float(thr), color="k", ls="--", lw=1)
    ax1.set_xlabel("ring coverage by NET / collagen-I")
    ax1.set_ylabel("tumour cells")
    c = ((sh.to_dict().get("sample") or {}).get("contact") or {})
    rates = [c.get("contact_rate_shielded"), c.get("contact_rate_unshielded")]
    if all(r is not None for r in rates):
        ax2.bar(["shielded", "unshielded"], rates, color=[(0.55, 0.35, 0.7), (0.7, 0.7, 0.7)])
        p = c.get("fisher_p_two_sided")
        ax2.set_title(f"Fisher p = {p:.3g}" if p is not None else "", fontsize=9)
    ax2.set_ylabel("tumour cells touching a T cell")
    return axes


def plot_enrichment(table: pd.DataFrame, ax):
    """Heatmap of neighbourhood-enrichment z-scores (rows: centre type, columns: neighbour type)."""
    if table is None or not len(table):
        ax.text(0.5, 0.5, "no statistics", ha="center", va="center", transform=ax.transAxes)
        return ax
    z = table.pivot(index="type_a", columns="type_b", values="zscore")
    vals = np.abs(z.to_numpy(dtype=float))
    vals = vals[np.isfinite(vals)]
    # the colour scale follows most pairs, not the one extreme self-pair
    lim = max(float(np.percentile(vals, 90)), 2.0) if len(vals) else 1.0
    im = ax.imshow(z.to_numpy(dtype=float), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(z.columns)), z.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(z.index)), z.index, fontsize=7)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="z-score")
    return ax


def plot_cross_l(table: pd.DataFrame, ax, *, max_pairs: int = 5):
    """L(r) − r of the key type pairs (the ones with envelopes) with their envelopes."""
    if table is None or not len(table) or "envelope_lo" not in table:
        ax.text(0.5, 0.5, "no cross-L envelopes", ha="center", va="center", transform=ax.transAxes)
        return ax
    key = table[table["envelope_lo"].notna()]
    if not len(key):
        ax.text(0.5, 0.5, "no cross-L envelopes (n_envelope_sim = 0)", ha="center", va="center",
                transform=ax.transAxes)
        return ax
    pairs = list(dict.fromkeys(zip(key["type_a"], key["type_b"])))[:max_pairs]
    value = "value"
    for a, b in pairs:
        sub = key[(key["type_a"] == a) & (key["type_b"] == b)].sort_values("r_um")
        r = sub["r_um"].to_numpy(float)
        ax.fill_between(r, sub["envelope_lo"] - r, sub["envelope_hi"] - r, color="0.85")
        ax.plot(r, sub[value] - r, lw=1.5, color=_rgb(phenotype_colour(b)), label=f"{a} → {b}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("r (µm)")
    ax.set_ylabel("L(r) − r (µm)")
    ax.legend(fontsize=7, frameon=False)
    return ax
