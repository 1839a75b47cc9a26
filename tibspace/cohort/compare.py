"""Group comparison of a cohort (e.g. responders vs non-responders).

The unit of inference is the **patient**: nest numbers are first summarised per
sample (mean over the sample's nests), samples per patient (mean), and only
then are groups compared, so nests of one tumour never count as independent
patients (a nest-level test on a null cohort rejects far more often than its
level; :func:`naive_nest_level_p` is kept only to show that).

Per metric, for two groups A and B (sorted labels, or as given):

- group medians and means over patients, ``n`` patients per group;
- effect = median(B) − median(A), with a percentile bootstrap CI
  (patients resampled within each group, ``n_boot`` draws, seeded);
- Cliff's delta = P(b > a) − P(b < a) over patient pairs;
- two-sided Mann–Whitney U test on the patient values (exact for small
  groups without ties); with more than two groups, Kruskal–Wallis and no
  effect size;
- Benjamini–Hochberg q-values across all metrics tested.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from tibspace.errors import InputError

_NOT_METRICS = {"nest_id", "centroid_x_um", "centroid_y_um", "seconds"}


def patient_table(samples: pd.DataFrame, nests: pd.DataFrame | None, *, by: str,
                  patient: str = "patient_id", exclude: Sequence[str] = ()) -> pd.DataFrame:
    """One row per patient: the group label and every numeric metric (see module docstring)."""
    if by not in samples.columns:
        raise InputError(f"--by {by}: no such column in the cohort table (columns: "
                         f"{', '.join(c for c in samples.columns if samples[c].dtype == object)})")
    df = samples.copy()
    if "status" in df:
        df = df[df["status"] != "failed"]
    if patient not in df:
        df[patient] = df["sample_id"]
    skip = set(exclude) | {by, patient, "sample_id"} | _NOT_METRICS
    numeric = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])]
    per_sample = df[["sample_id", patient, by] + numeric]
    if nests is not None and len(nests):
        ncols = [c for c in nests.columns if c not in skip and c not in df.columns
                 and pd.api.types.is_numeric_dtype(nests[c]) and not pd.api.types.is_bool_dtype(nests[c])]
        nest_means = nests.groupby("sample_id")[ncols].mean().add_prefix("nests.")
        per_sample = per_sample.merge(nest_means, left_on="sample_id", right_index=True, how="left")
    groups = per_sample.groupby(patient)[by].nunique()
    mixed = groups[groups > 1]
    if len(mixed):
        raise InputError(f"--by {by}: patient {mixed.index[0]!r} has samples in more than one group")
    metric_cols = [c for c in per_sample.columns if c not in ("sample_id", patient, by)]
    out = per_sample.groupby(patient).agg({by: "first", **{c: "mean" for c in metric_cols}})
    return out.reset_index()


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(b > a) − P(b < a) over all pairs.

    Examples
    --------
    >>> cliffs_delta(np.array([1., 2.]), np.array([3., 4.]))
    1.0
    """
    diff = np.subtract.outer(b, a)
    return float((np.sign(diff)).mean()) if diff.size else float("nan")


def bootstrap_median_difference(a, b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of median(b) − median(a), resampling within each group."""
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(n_boot, len(a)))
    ib = rng.integers(0, len(b), size=(n_boot, len(b)))
    d = np.median(b[ib], axis=1) - np.median(a[ia], axis=1)
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def compare_groups(patients: pd.DataFrame, *, by: str, patient: str = "patient_id",
                   groups: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                   min_per_group: int = 2) -> pd.DataFrame:
    """Tidy comparison table, one row per metric (see module docstring for the statistics)."""
    from scipy import stats

    labels = list(groups) if groups else sorted(patients[by].dropna().astype(str).unique())
    if len(labels) < 2:
        raise InputError(f"--by {by}: needs at least two groups (found {labels})")
    lab = patients[by].astype(str)
    rows = []
    for m in [c for c in patients.columns if c not in (patient, by)]:
        vals = [patients.loc[lab == g, m].to_numpy(dtype=float) for g in labels]
        vals = [v[np.isfinite(v)] for v in vals]
        row = {"metric": m, "groups": " vs ".join(labels), "test": "", "p_value": np.nan}
        for g, v in zip(labels, vals):
            row[f"n_{g}"] = len(v)
            row[f"median_{g}"] = float(np.median(v)) if len(v) else np.nan
            row[f"mean_{g}"] = float(np.mean(v)) if len(v) else np.nan
        if min(len(v) for v in vals) < min_per_group or np.ptp(np.concatenate(vals)) == 0:
            row["test"] = "not tested (too few patients or constant)"
            rows.append(row)
            continue
        if len(labels) == 2:
            a, b = vals
            row["test"] = "Mann-Whitney U (patients)"
            row["p_value"] = float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)
            row["effect_median_difference"] = float(np.median(b) - np.median(a))
            row["ci_low"], row["ci_high"] = bootstrap_median_difference(a, b, n_boot=n_boot, seed=seed)
            row["cliffs_delta"] = cliffs_delta(a, b)
        else:
            row["test"] = "Kruskal-Wallis (patients)"
            row["p_value"] = float(stats.kruskal(*vals).pvalue)
        rows.append(row)
    out = pd.DataFrame(rows)
    tested = out["p_value"].notna()
    out["q_value"] = np.nan
    if tested.any():
        out.loc[tested, "q_value"] = stats.false_discovery_control(out.loc[tested, "p_value"].to_numpy(),
                                                                   method="bh")
    return out.sort_values(["q_value", "metric"], na_position="last").reset_index(drop=True)


def naive_nest_level_p(nests: pd.DataFrame, metric: str, *, by: str) -> float:
    """Mann–Whitney p of ``metric`` with every nest as an independent unit.

    Wrong for inference (nests of one patient are correlated); kept to show how
    anti-conservative it is on null cohorts.
    """
    from scipy import stats

    labels = sorted(nests[by].dropna().astype(str).unique())
    a, b = (nests.loc[nests[by].astype(str) == g, metric].dropna().to_numpy(float) for g in labels[:2])
    return float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)


def plot_comparison(patients: pd.DataFrame, table: pd.DataFrame, *, by: str, top: int = 9):
    """A matplotlib Figure: per metric (the ``top`` smallest q), patient values
    per group as points over a box plot, titled with the q-value."""
    from matplotlib.figure import Figure

    shown = table[table["q_value"].notna()].head(top)
    n = max(len(shown), 1)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(4 * cols, 3.2 * rows), dpi=100)
    labels = [g.strip() for g in (shown["groups"].iloc[0].split(" vs ") if len(shown) else [])]
    rng = np.random.default_rng(0)
    for k, (_, r) in enumerate(shown.iterrows()):
        ax = fig.add_subplot(rows, cols, k + 1)
        data = [patients.loc[patients[by].astype(str) == g, r["metric"]].dropna().to_numpy(float) for g in labels]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for i, v in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=14, color="k", alpha=0.7, zorder=3)
        ax.set_title(f"{r['metric']}\nq = {r['q_value']:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    if not len(shown):
        fig.add_subplot(111).text(0.5, 0.5, "no metric could be tested", ha="center", va="center")
    fig.tight_layout()
    return fig
