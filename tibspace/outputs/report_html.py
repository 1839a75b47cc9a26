"""The HTML report: a summary in plain words for the person who signs the case.

Rendered with jinja2 from ``templates/report.html.j2``: the findings with
units and how sure they are, what was not measured and why, the stains with
the structures drawn over them, the profile, barrier and shield figures, the
statistics, a readable per-nest table (the full one is ``nests.csv``), a
glossary and the gates and parameters. Printable (CSS print rules).
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd

GLOSSARY = [
    ("Tumour nest", "A connected region of tumour cells: the union of discs around tumour cells, closed and "
                    "filled; nests smaller than the minimum area are dropped."),
    ("Signed distance", "Distance of a cell to the nearest tumour boundary in µm, negative inside the tumour."),
    ("Infiltration ratio", "CD8 T-cell density within the margin inside the tumour divided by the density in the "
                           "stroma outside (up to 200 µm)."),
    ("Immune phenotype", "desert: few T cells near the tumour at all; excluded: T cells present outside but not "
                         "inside (infiltration ratio below the threshold); inflamed: otherwise."),
    ("Exclusion zone", "A stretch of tumour margin where the T-cell density is significantly below the stromal "
                       "reference density."),
    ("Barrier coverage", "Fraction of the tumour boundary lined by SPP1+ macrophages and cancer-associated "
                         "fibroblasts (CAFs) within the barrier band, measured along the boundary."),
    ("Barrier → exclusion link", "Whether T cells enter the tumour less where the barrier is than where it is "
                                 "not, tested against rotations of the barrier pattern along each boundary."),
    ("Shielded tumour cell", "A tumour cell whose surrounding ring is covered by NET (CitH3/MPO) or collagen-I "
                             "pixels at least to the threshold."),
    ("T-contact rate", "Share of tumour cells whose outline touches a CD8 T cell."),
    ("Neighbourhood enrichment", "How much more (z > 0) or less (z < 0) often two phenotypes are neighbours than "
                                 "under random relabelling of the same cells."),
    ("Cross-L function", "Ripley's cross-L: the radius at which one type would find the other if placed at random; "
                         "above r means clustered together."),
]


def fmt(v, digits: int = 3) -> str:
    """A number for people: thousands separators, 3 significant digits, no exponents below 1e6."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.{digits}g}"
    return str(v)


def pct(v) -> str:
    return "–" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.0f} %"


def findings(m: dict) -> list[str]:
    """Plain-word sentences of the key results (HTML-safe: numbers and fixed words only)."""
    out = []
    an = m.get("analyses") or {}
    ex = (an.get("exclusion") or {}).get("sample") or {}
    if ex:
        call = ex.get("immune_phenotype")
        out.append(f"<b>Immune phenotype: {call}.</b> CD8 T cells: {fmt(ex.get('t_density_inside_per_mm2'))}/mm² "
                   f"within the margin inside the tumour vs {fmt(ex.get('t_density_outside_per_mm2'))}/mm² in the "
                   f"stroma outside (infiltration ratio {fmt(ex.get('infiltration_ratio'))}; based on "
                   f"{fmt(ex.get('n_t_inner_margin'))} + {fmt(ex.get('n_t_core'))} T cells inside and "
                   f"{fmt(ex.get('n_t_outer_margin'))} + {fmt(ex.get('n_t_stroma'))} outside). "
                   f"Exclusion zones border {pct(ex.get('zone_perimeter_fraction') or 0)} of the tumour boundary.")
    br = (an.get("barrier") or {}).get("sample") or {}
    if br:
        link = br.get("link") or {}
        p = link.get("p_value")
        verdict = ("T cells enter the tumour less where the barrier is" if p is not None and p < 0.05 else
                   "no significant difference in T-cell entry where the barrier is") if p is not None else \
            "the barrier→exclusion link could not be tested"
        out.append(f"<b>Tumour immune barrier: {pct(br.get('barrier_coverage'))} of the tumour boundary</b> "
                   f"({fmt(br.get('perimeter_um'))} µm over {fmt(br.get('n_nests'))} nests) is lined by SPP1+ "
                   f"macrophages and CAFs ({fmt(br.get('n_macrophage_barrier'))} macrophages, "
                   f"{fmt(br.get('n_caf_barrier'))} CAFs); {fmt(br.get('n_gaps'))} gaps, the largest "
                   f"{fmt(br.get('largest_gap_um'))} µm. {verdict[0].upper() + verdict[1:]}"
                   + (f" (p = {fmt(p)})." if p is not None else "."))
    sh = (an.get("shield") or {}).get("sample") or {}
    if sh:
        c = sh.get("contact") or {}
        out.append(f"<b>Shields: {pct(sh.get('shielded_fraction'))} of tumour cells</b> are wrapped by NET or "
                   f"collagen-I. CD8 T cells touch {pct(c.get('contact_rate_shielded'))} of shielded and "
                   f"{pct(c.get('contact_rate_unshielded'))} of unshielded tumour cells (Fisher p = "
                   f"{fmt(c.get('fisher_p_two_sided'))}; {fmt(c.get('n_shielded'))} and "
                   f"{fmt(c.get('n_unshielded'))} cells).")
    if not out:
        out.append("No structure could be measured on this sample (see below).")
    return out


_NEST_COLUMNS = [  # (column, header, formatter)
    ("nest_id", "nest", fmt), ("area_um2", "area (mm²)", lambda v: fmt(v / 1e6 if v == v else v)),
    ("perimeter_um", "boundary (µm)", fmt), ("barrier_coverage", "barrier coverage", pct),
    ("largest_gap_um", "largest gap (µm)", fmt), ("immune_phenotype", "immune phenotype", fmt),
    ("infiltration_ratio", "infiltration ratio", fmt), ("t_density_inside_per_mm2", "T inside (/mm²)", fmt),
    ("t_density_outside_per_mm2", "T outside (/mm²)", fmt), ("zone_perimeter_fraction", "in exclusion zones", pct),
    ("shielded_fraction", "shielded tumour cells", pct),
]


def nest_rows(per_nest: pd.DataFrame, max_rows: int = 60):
    if per_nest is None or not len(per_nest):
        return [], [], False
    cols = [c for c in _NEST_COLUMNS if c[0] in per_nest.columns]
    show = per_nest.sort_values("area_um2", ascending=False).head(max_rows) if len(per_nest) > max_rows else per_nest
    rows = [[(f(r[c]), not isinstance(r[c], str)) for c, _, f in cols] for _, r in show.iterrows()]
    return [h for _, h, _ in cols], rows, len(per_nest) > max_rows


def gate_rows(m: dict):
    rows = []
    for g in (m.get("gates") or {}).values():
        rows.append({"marker": g.get("marker"), "method": g.get("method"), "value": fmt(g.get("value"), 4),
                     "positive": f"{fmt(g.get('n_positive'))} ({pct(g.get('fraction_positive'))})",
                     "decision": g.get("decision", "")})
    return rows, any(r["decision"] for r in rows)


def render(result, pngs: dict[str, bytes]) -> str:
    import jinja2

    m = result.metrics
    env = jinja2.Environment(loader=jinja2.PackageLoader("tibspace.outputs", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    header, rows, truncated = nest_rows(result.per_nest)
    gates, decisions = gate_rows(m)
    params = [(k, fmt(v) if not isinstance(v, list) else ", ".join(fmt(x) for x in v))
              for k, v in sorted((m.get("parameters") or {}).items()) if not k.startswith("_")]
    pairs = [params[i:i + 2] for i in range(0, len(params), 2)]
    th = result.thumbnail or {}
    ctx = dict(
        sample_id=result.sample_id, n_cells=fmt(m.get("n_cells")), tissue_mm2=fmt(m.get("tissue_area_mm2")),
        source=("image " + str((m.get("input") or {}).get("path", ""))) if result.image_path else "cell table",
        version=m.get("tibspace_version"), seed=m.get("seed"), findings=findings(m),
        skipped=sorted((m.get("skipped") or {}).items()), warnings=list(m.get("warnings") or []),
        figures={k: base64.b64encode(v).decode() for k, v in pngs.items() if v},
        stain_channels=", ".join(f"{k}: {'+'.join(v)}" for k, v in (th.get("channels") or {}).items()),
        nest_header=header, nests=rows, nests_truncated=truncated, n_nests=len(result.per_nest),
        glossary=GLOSSARY, gates=gates, gate_decisions=decisions, parameters=pairs)
    return env.get_template("report.html.j2").render(**ctx)
