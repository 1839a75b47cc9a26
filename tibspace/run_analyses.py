"""The three analyses of a run as steps: exclusion, barrier, shield.

:func:`_analysis_steps` gives ``(name, run)`` for each analysis the panel
supports and records why the others are skipped (``metrics["skipped"]``):
exclusion needs an effector-T phenotype; barrier also SPP1+ macrophages and
CAFs; shield needs an image, a ``[masks]`` section and tumour and effector-T
phenotypes. ``run()`` calls the analysis with the panel's ``[parameters]``
(µm, cells/mm²) and stores its geometries on the result (exclusion zones,
barrier segments, shield masks and per-cell shield columns).
"""

from __future__ import annotations

import numpy as np


def _analysis_steps(result, panel, params, defined, image, channel_index, pixel_size_um, seed, progress,
                    skipped, timer):
    """Yield ``(name, run)`` for every analysis that can run; record the others in ``skipped``."""
    roles = panel.roles
    steps = (("exclusion", _exclusion_step(result, roles, defined, params, progress, skipped, timer)),
             ("barrier", _barrier_step(result, roles, defined, params, seed, progress, skipped, timer)),
             ("shield", _shield_step(result, panel, defined, params, image, channel_index, pixel_size_um,
                                     seed, progress, skipped, timer)))
    for name, run in steps:
        if run is not None:
            yield name, run


def _missing_roles(roles, defined, *names):
    """The roles among ``names`` for which the panel defines no phenotype."""
    return [r for r in names if not (set(roles.get(r, [])) & defined)]


def _exclusion_step(result, roles, defined, params, progress, skipped, timer):
    """``run()`` of the exclusion analysis, or None (reason in ``skipped``)."""
    miss = _missing_roles(roles, defined, "effector_t")
    if miss:
        skipped["exclusion"] = f"the panel defines no phenotype for role(s) {miss} (e.g. CD8_T = \"CD3+ & CD8+\")"
        return None
    def run_exclusion(progress=progress, region=None, tissue=None):
        from tibspace.analyses import exclusion_analysis

        region = result.region if region is None else region
        tissue = result.tissue if tissue is None else tissue
        with timer("exclusion"):
            ex = exclusion_analysis(
                result.cells, region, tissue, t_types=tuple(roles["effector_t"]),
                margin_um=float(params["margin_um"]), outside_band_um=float(params["outside_band_um"]),
                desert_density=float(params["desert_density"]), excluded_ratio=float(params["excluded_ratio"]),
                bandwidth_um=float(params["exclusion_bandwidth_um"]), grid_um=float(params["exclusion_grid_um"]),
                exclusion_fraction=float(params["exclusion_fraction"]),
                min_zone_area_um2=float(params["exclusion_min_area_um2"]),
                zone_alpha=float(params["exclusion_zone_alpha"]), progress=progress)
        result.exclusion_zones = list(getattr(ex, "zones", []) or [])
        return ex

    return run_exclusion


def _barrier_step(result, roles, defined, params, seed, progress, skipped, timer):
    """``run()`` of the barrier analysis, or None (reason in ``skipped``)."""
    miss = _missing_roles(roles, defined, "spp1_macrophage", "caf", "effector_t")
    if miss:
        skipped["barrier"] = (f"the panel defines no phenotype for role(s) {', '.join(miss)} "
                              f"(a TIB needs SPP1+ macrophages and CAFs: add an SPP1 marker and e.g. "
                              f"SPP1_macrophage = \"CD68+ & SPP1+\")")
        return None
    def run_barrier():
        from tibspace.analyses import barrier_analysis

        with timer("barrier"):
            br = barrier_analysis(
                result.cells, result.region, result.tissue,
                barrier_types=tuple(roles["barrier"]), macrophage_types=tuple(roles["spp1_macrophage"]),
                caf_types=tuple(roles["caf"]), t_types=tuple(roles["effector_t"]),
                segment_um=float(params["segment_um"]), barrier_width_um=float(params["barrier_width_um"]),
                barrier_density=float(params["barrier_density"]), margin_um=float(params["margin_um"]),
                outside_band_um=float(params["outside_band_um"]),
                colocalization_radii_um=tuple(params["colocalization_radii_um"]),
                n_shifts=int(params["n_shifts"]), seed=seed,
                signed_dist_um=result.cells["signed_dist_um"].to_numpy(float), progress=progress)
        result.segments = br.segments
        return br

    return run_barrier


def _shield_step(result, panel, defined, params, image, channel_index, pixel_size_um, seed, progress,
                 skipped, timer):
    """``run()`` of the shield analysis (masks from the image, then the analysis), or None."""
    roles = panel.roles
    mask_specs = dict(panel.masks)
    if image is None:
        skipped["shield"] = "needs NET/collagen-I pixel masks from an image (cell-table-only run)"
        return None
    if not mask_specs:
        skipped["shield"] = "the panel has no [masks] section (NET from CitH3, collagen I from COL1)"
        return None
    if _missing_roles(roles, defined, "tumour", "effector_t"):
        skipped["shield"] = "the panel defines no tumour or effector T phenotype"
        return None
    for name in ("net", "col1"):
        if name not in mask_specs:
            what = "NET (CitH3, optionally requiring MPO)" if name == "net" else "collagen I (COL1)"
            skipped[f"shield_{name}"] = f"the panel has no [masks] {name} entry for {what}: that part of the shield is not measured"

    def run_shield():
        from tibspace.analyses import shield_analysis, shield_masks

        with timer("shield"):
            masks, _, mask_gates = shield_masks(image, mask_specs, channel_index, pixel_size_um,
                                                tile_size_px=int(params.get("tile_size_px", 2048)),
                                                return_decisions=True, progress=progress)
            sh = shield_analysis(
                result.cells, _labels_array(result.labels), masks, pixel_size_um, result.region,
                tissue=result.tissue,
                tumour_types=tuple(roles["tumour"]), t_types=tuple(roles["effector_t"]),
                neutrophil_types=tuple(roles.get("neutrophil", ())),
                shield_ring_um=float(params["shield_ring_um"]),
                shield_min_coverage=float(params["shield_min_coverage"]),
                nest_strip_um=float(params["nest_strip_um"]), contact_um=float(params["contact_um"]),
                antagonism_tile_um=float(params["antagonism_tile_um"]),
                antagonism_radii_um=tuple(params["antagonism_radii_um"]), seed=seed, progress=progress)
        result.masks = masks
        result.metrics.setdefault("mask_gates", {}).update(mask_gates)
        per_cell = getattr(sh, "per_cell", None)
        if per_cell is not None and len(per_cell):
            cols = [c for c in per_cell.columns if c != "cell_id"]
            result.cells = result.cells.drop(columns=[c for c in cols if c in result.cells.columns]).merge(
                per_cell, on="cell_id", how="left")
        return sh

    return run_shield


def _labels_array(labels):
    """The label image as a numpy array (a dask or zarr array is read)."""
    if labels is None or isinstance(labels, np.ndarray):
        return labels
    return np.asarray(labels)
