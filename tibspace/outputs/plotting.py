"""Figures of a result, shared by the HTML report and the napari results dock.

Each function draws into a given matplotlib ``Axes`` and returns it, so the
same picture appears in ``report.html`` and in napari.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tibspace.outputs.colours import PHENOTYPE_COLOURS, STRUCTURE_COLOURS, phenotype_colour


def _rgb(c):
    return tuple(v / 255 for v in c)


def plot_infiltration_profile(profiles: pd.DataFrame, ax, *, phenotypes=None, title="Infiltration profile"):
    """Density (cells/mm²) against signed distance to the tumour boundary."""
    if profiles is None or len(profiles) == 0:
        ax.text(0.5, 0.5, "no tumour region: no profile", ha="center", va="center", transform=ax.transAxes)
        return ax
    df = profiles
    if "nest_id" in df.columns:
        df = df.groupby(["band_mid_um", "phenotype"], as_index=False)[["count", "area_um2"]].sum()
        df["density_per_mm2"] = df["count"] / df["area_um2"] * 1e6
    for ph in (phenotypes or sorted(df["phenotype"].unique())):
        sub = df[df["phenotype"] == ph].sort_values("band_mid_um")
        if len(sub) == 0 or sub["count"].sum() == 0:
            continue
        ax.plot(sub["band_mid_um"], sub["density_per_mm2"], marker="o", ms=3, lw=1.5,
                color=_rgb(phenotype_colour(ph)), label=ph)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("signed distance to tumour boundary (µm; < 0 inside)")
    ax.set_ylabel("density (cells/mm²)")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return ax


def plot_barrier_coverage(per_nest: pd.DataFrame, ax, *, title="Barrier coverage per nest"):
    """Bar chart of ``barrier_coverage`` per nest, with the sample's value."""
    if per_nest is None or len(per_nest) == 0 or "barrier_coverage" not in per_nest:
        ax.text(0.5, 0.5, "barrier analysis not run", ha="center", va="center", transform=ax.transAxes)
        return ax
    pn = per_nest.sort_values("nest_id")
    ax.bar(pn["nest_id"].astype(str), pn["barrier_coverage"], color=_rgb(STRUCTURE_COLOURS["barrier_covered"]))
    ax.set_ylim(0, 1)
    ax.set_xlabel("nest")
    ax.set_ylabel("barrier coverage (fraction of perimeter)")
    ax.set_title(title)
    return ax


def plot_overview(result, ax, *, max_points: int = 200_000, seed: int = 0):
    """Map of cells coloured by phenotype with nests, barrier segments and exclusion zones."""
    import shapely

    cells = result.cells
    if len(cells) > max_points:  # a seeded subsample keeps the figure light
        cells = cells.iloc[np.sort(np.random.default_rng(seed).choice(len(cells), max_points, replace=False))]
    ph = cells["phenotype"].astype(str).to_numpy()
    cols = np.array([_rgb(phenotype_colour(p)) for p in ph]) if len(ph) else np.zeros((0, 3))
    # Marker about one cell (8 µm) wide at the figure's scale, but at least a dot.
    extent = max(float(np.ptp(cells["x_um"])) if len(cells) else 1.0, 1.0)
    width_pt = ax.figure.get_figwidth() * 72 * 0.8
    size = float(np.clip((8.0 * width_pt / extent) ** 2, 0.5, 30.0))
    ax.scatter(cells["x_um"], cells["y_um"], s=size, c=cols, linewidths=0, rasterized=True)

    def draw(geom, **kw):
        for g in getattr(geom, "geoms", [geom]):
            if g.is_empty:
                continue
            if g.geom_type == "Polygon":
                x, y = g.exterior.xy
                ax.plot(x, y, **kw)
                for r in g.interiors:
                    x, y = r.xy
                    ax.plot(x, y, **kw)
            elif g.geom_type in ("LineString", "LinearRing"):
                x, y = g.xy
                ax.plot(x, y, **kw)
            elif hasattr(g, "geoms"):
                draw(g, **kw)

    if result.region is not None:
        for i, p in enumerate(result.region.nests, start=1):
            draw(p, color="k", lw=0.6)
            c = p.representative_point()
            ax.text(c.x, c.y, str(i), fontsize=8, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
    barrier = result.analyses.get("barrier")
    if barrier is not None:
        for attr, key in (("covered_geometry", "barrier_covered"), ("gap_geometry", "barrier_gap")):
            g = getattr(barrier, attr, None)
            if g is not None and not shapely.is_empty(g):
                draw(g, color=_rgb(STRUCTURE_COLOURS[key]), lw=2.5)
    for z in result.exclusion_zones or []:
        draw(z, color=_rgb(STRUCTURE_COLOURS["exclusion_zone"]), lw=1.0, ls="--")
    ax.set_aspect("equal")
    ax.invert_yaxis()  # y down, as in the image
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    handles = [ax.scatter([], [], s=12, color=_rgb(phenotype_colour(p)), label=p)
               for p in sorted(set(ph))]
    ax.legend(handles=handles, fontsize=7, loc="upper right", markerscale=1.5, frameon=True)
    ax.set_title("Cells, tumour nests (black), barrier covered (green) / gaps (red), exclusion zones (yellow)",
                 fontsize=9)
    return ax
