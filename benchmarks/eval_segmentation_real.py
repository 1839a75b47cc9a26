"""Score tibspace (defaults) and the naive pipeline on every real dataset.

FIHC4: nucleus and whole-cell F1 at IoU >= 0.5 vs the inForm labels (cell =
inForm nucleus or cytoplasm label); CSM: centroid F1 within 4 px vs the CSM
tool's cells (0.5 µm/px assumed); DCIS MIBI (0.49 µm/px assumed, HH3 + Nuc)
and mihc: counts. One JSON line per image. ``NAIVE=1`` also runs the naive
pipeline (8 µm); Usage::

    NAIVE=1 TIBSPACE_REAL_DATA=/path/to/real python benchmarks/eval_segmentation_real.py [FIHC4 CSMB09 ...]
"""
import json, os, sys, time, warnings
from pathlib import Path

import numpy as np, pandas as pd, tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.simplefilter("ignore")
from bench_segmentation import naive_segment
from tibspace.segment import match_labels, match_points, segment_image
from tibspace.io import open_image
R = os.environ.get("TIBSPACE_REAL_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real")) + "/"
NAIVE = os.environ.get("NAIVE") == "1"
only = sys.argv[1:]
def f1(m): return 2 * m[0] / (2 * m[0] + m[1] + m[2]) if m[0] else 0.0
rows = []
def run(name, path, nuc, px, mem=(), kw={}):
    t0 = time.perf_counter()
    res = segment_image(path, nuc, mem, pixel_size_um=px, measure_channels=nuc[:1], **kw)
    p = res.parameters
    return res, {"image": name, "d_um": round(p["nucleus_diameter_um"], 2),
                 "sigma_um": round(p["smoothing_sigma_um"], 2), "cells": len(res.cells),
                 "s": round(time.perf_counter() - t0, 1)}
def naive(path, nuc, px, d=8.0):
    if not NAIVE:
        im = open_image(path, pixel_size_um=px); z = np.zeros(im.shape[1:], np.int32); z[0, 0] = 1; im.close(); return z, z
    img = open_image(path, pixel_size_um=px)
    ny, nx = img.shape[1:]
    sig = sum(img.read_region([img.channel_index(c)], 0, ny, 0, nx)[0].astype(np.float32) / max(np.percentile(img.read_region([img.channel_index(c)], 0, ny, 0, nx)[0], 99.5), 1e-9) for c in nuc)
    img.close()
    return naive_segment(sig, px, nucleus_diameter_um=d)
def want(n): return not only or any(o in n for o in only)
# FIHC4
d = R + "phenoptr_lung_vectra/"
if want("FIHC4"):
    maps = tifffile.imread(d + "FIHC4__0929309_HP_IM3_2_binary_seg_maps.tif")
    refn = maps[1].astype(np.int32); refc = np.where(maps[1] > 0, maps[1], maps[2]).astype(np.int32)
    path = d + "FIHC4__0929309_HP_IM3_2_component_data.tif"
    res, row = run("FIHC4", path, ["DAPI"], None)
    row["F1_nuc"] = round(f1(match_labels(np.asarray(res.nuclei), refn, 0.5)), 3)
    row["F1_cell"] = round(f1(match_labels(np.asarray(res.labels), refc, 0.5)), 3)
    nn, nc = naive(path, ["DAPI"], 0.4971469753648031)
    row["naive_cells"] = int(nn.max()); row["naive_F1_nuc"] = round(f1(match_labels(nn, refn, 0.5)), 3)
    row["naive_F1_cell"] = round(f1(match_labels(nc, refc, 0.5)), 3); row["ref"] = int(refn.max())
    rows.append(row)
# CSM
c = R + "csm_breast_mif/"
ref = pd.read_csv(c + "CSM_RAWcellfeaturedata_test.csv")
from skimage.measure import regionprops_table
for crop in ("B09", "B14"):
    if not want("CSM" + crop): continue
    rr = ref[ref["imageID"].str.contains(crop)][["m.cx", "m.cy"]].to_numpy()
    path = c + f"ABCM22001_{crop}_MiniCrop.ome.tif"
    res, row = run("CSM " + crop, path, ["DAPI"], 0.5)
    row["cF1"] = round(f1(match_points(res.cells[["x_um", "y_um"]].to_numpy() / 0.5, rr, 4.0)), 3)
    nn, _ = naive(path, ["DAPI"], 0.5)
    rp = regionprops_table(nn, properties=["centroid"])
    row["naive_cells"] = int(nn.max()); row["naive_cF1"] = round(f1(match_points(np.c_[rp["centroid-1"], rp["centroid-0"]], rr, 4.0)), 3)
    row["ref"] = len(rr)
    rows.append(row)
for f in ("Point2203_pt1072_31606", "Point2206_pt1116_31620"):
    if not want("DCIS" + f[5:9]): continue
    path = R + "dcis_mibi/" + f
    res, row = run("DCIS " + f[5:9], path, ["HH3", "Nuc"], 0.49)
    res2, row2 = run("DCIS+mem", path, ["HH3", "Nuc"], 0.49, ["PanKRT", "CD45"])
    row["cells_mem"] = row2["cells"]
    row["nuc_area_med"] = round(float(res.cells.nucleus_area_um2.median()), 1)
    nn, _ = naive(path, ["HH3", "Nuc"], 0.49)
    row["naive_cells"] = int(nn.max())
    rows.append(row)
if want("mihc"):
    path = R + "mihc_miniature/WD-76845-003_ROI01.ome.tif"
    res, row = run("mihc", path, ["NUCLEI"], None)
    nn, _ = naive(path, ["NUCLEI"], 0.5022)
    row["naive_cells"] = int(nn.max()); rows.append(row)
for r in rows: print(json.dumps(r))
