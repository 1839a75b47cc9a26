"""Benchmark: tiled tibspace segmentation vs the naive whole-image scikit-image pipeline.

Generates a synthetic 12-channel image (``tibspace.synthetic.make_tissue``,
default 8192 x 8192 at 0.5 µm/px), stores it as a tiled OME-TIFF in a temp
dir, then runs, each in its own subprocess so that peak memory is measured
per variant:

(a) ``tibspace.segmentation.segment_image`` (its default in-process Dask
    LocalCluster, one thread per core, tiles of 2048 px, measuring all 12
    channels per cell and per nucleus);
(b) the naive whole-image scikit-image pipeline: read the whole image,
    gaussian -> Otsu -> distance transform -> peak_local_max -> watershed ->
    expand_labels -> regionprops_table (cells with shape features and the 12
    intensity means, and nuclei with their 12 intensity means).

Reported per variant: wall time, megapixels/s, cells/s, peak memory (sum of
the RSS of the subprocess and all its children, sampled every 0.1 s, and the
kernel's ru_maxrss of the subprocess itself) and nucleus F1 at IoU >= 0.5 vs
the planted truth (with mean IoU of matches).

``--real`` also scores both pipelines on the real CSM crops (centroid F1
within 4 px vs the CSM tool's cells) and writes the DCIS MIBI overlays to
``docs/images/seg_dcis_<field>.png``.

Usage::

    nice -n 10 python benchmarks/bench_segmentation.py --size 8192 --repeats 1
    python benchmarks/bench_segmentation.py --size 2048 --real
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PX = 0.5  # µm per pixel of the synthetic image
NUCLEUS_DIAMETER_UM = 8.0
EXPANSION_UM = 3.0


# --------------------------------------------------------------------------
# The naive pipeline (what a user writes with scikit-image in an afternoon)
# --------------------------------------------------------------------------


def naive_segment(dapi: np.ndarray, px: float, nucleus_diameter_um: float = NUCLEUS_DIAMETER_UM,
                  expansion_um: float = EXPANSION_UM):
    """Whole-image gaussian -> Otsu -> EDT -> peak_local_max -> watershed -> expand."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import expand_labels, watershed

    d_px = nucleus_diameter_um / px
    sm = gaussian(dapi.astype(np.float32), sigma=max(d_px / 16, 0.5), preserve_range=True)
    mask = sm > threshold_otsu(sm)
    del sm
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=max(int(round(0.45 * d_px)), 1),
                           threshold_abs=0.1 * d_px, exclude_border=False)
    markers = np.zeros(dapi.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    nuclei = watershed(-dist, markers, mask=mask)
    del dist, markers, mask
    cells = expand_labels(nuclei, distance=expansion_um / px)
    return nuclei, cells


def naive_measure(cells: np.ndarray, nuclei: np.ndarray, image_yxc: np.ndarray):
    import pandas as pd
    from skimage.measure import regionprops_table

    cell = pd.DataFrame(regionprops_table(
        cells, intensity_image=image_yxc,
        properties=["label", "centroid", "area", "perimeter", "eccentricity", "solidity",
                    "intensity_mean"]))
    nuc = pd.DataFrame(regionprops_table(nuclei, intensity_image=image_yxc,
                                         properties=["label", "area", "intensity_mean"]))
    return cell.merge(nuc, on="label", how="left", suffixes=("", "_nucleus"))


# --------------------------------------------------------------------------
# Variants, each run in a subprocess (``--run-variant``)
# --------------------------------------------------------------------------


def run_variant(args: argparse.Namespace) -> None:
    out = {}
    t0 = time.perf_counter()
    if args.run_variant == "tibspace":
        sys.path.insert(0, str(REPO))
        from tibspace.segment import segment_image

        res = segment_image(args.image, "DAPI", tile_size_px=args.tile, n_workers=args.workers,
                            expansion_um=EXPANSION_UM)  # nucleus size estimated (the default)
        out["seconds"] = time.perf_counter() - t0
        out["cells"] = len(res.cells)
        out["n_channels_measured"] = len(res.parameters["measure_channels"])
        out["qc"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.qc.items()}
        # copy in row bands: loading the whole zarr would inflate the peak memory
        with open(args.nuclei_out, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<i4", "fortran_order": False,
                                                      "shape": tuple(res.nuclei.shape)})
            for y in range(0, res.nuclei.shape[0], 1024):
                fh.write(np.ascontiguousarray(res.nuclei[y:y + 1024], dtype="<i4").tobytes())
    else:
        import tifffile

        img = tifffile.imread(args.image)  # (C, Y, X)
        t1 = time.perf_counter()
        nuclei, cells = naive_segment(img[0], PX)
        t2 = time.perf_counter()
        table = naive_measure(cells, nuclei, np.moveaxis(img, 0, -1))
        out["seconds"] = time.perf_counter() - t0
        out["seconds_read"] = t1 - t0
        out["seconds_segment"] = t2 - t1
        out["seconds_measure"] = out["seconds"] - (t2 - t0)
        out["cells"] = len(table)
        out["n_channels_measured"] = int(img.shape[0])
        np.save(args.nuclei_out, nuclei)
    import resource

    # VmHWM: this process's own peak RSS. (ru_maxrss is not used: after
    # fork+exec Linux reports the larger parent's high-water mark.)
    with open("/proc/self/status") as fh:
        hwm = [ln for ln in fh if ln.startswith("VmHWM:")]
    out["vmhwm_self_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else float("nan")
    # CPU seconds of this process and of its (terminated, waited-for) children
    # such as the Dask nannies/workers: a load-independent measure of work.
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_seconds"] = me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
    print("RESULT " + json.dumps(out), flush=True)


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure_subprocess(cmd: list[str]) -> tuple[dict, float]:
    """Run ``cmd``; return its RESULT json and the peak RSS of its process tree (MB)."""
    import psutil

    proc = subprocess.Popen(cmd, close_fds=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    ps = psutil.Process(proc.pid)
    peak = [0]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[-1]} failed:\n{stderr[-3000:]}")
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), peak[0] / 2**20


# --------------------------------------------------------------------------
# Real data: CSM centroid F1, DCIS overlays
# --------------------------------------------------------------------------


def real_data(real: Path) -> None:
    import pandas as pd
    import tifffile

    sys.path.insert(0, str(REPO))
    from tibspace.segment import match_points, segment_image

    print("\n== real data ==")
    csm = real / "csm_breast_mif"
    ref = pd.read_csv(csm / "CSM_RAWcellfeaturedata_test.csv")
    for d_um in (6.5, 8.0):
        tot = {"tibspace": np.zeros(3, int), "naive": np.zeros(3, int)}
        for crop in ("B09", "B14"):
            path = csm / f"ABCM22001_{crop}_MiniCrop.ome.tif"
            rr = ref[ref["imageID"].str.contains(crop)][["m.cx", "m.cy"]].to_numpy()
            res = segment_image(path, "DAPI", pixel_size_um=0.5, nucleus_diameter_um=d_um,
                                measure_channels=["DAPI"])
            ours = res.cells[["x_um", "y_um"]].to_numpy() / 0.5
            nuc, _ = naive_segment(tifffile.imread(path)[0], 0.5, nucleus_diameter_um=d_um)
            from skimage.measure import regionprops_table

            rp = regionprops_table(nuc, properties=["centroid"])
            naive = np.c_[rp["centroid-1"], rp["centroid-0"]]
            for name, pts in (("tibspace", ours), ("naive", naive)):
                m = match_points(pts, rr, 4.0)
                tot[name] += m[:3]
                f1 = 2 * m[0] / (2 * m[0] + m[1] + m[2])
                print(f"CSM {crop} d={d_um} µm {name:8s}: {len(pts)} cells vs {len(rr)} ref, "
                      f"tp={m[0]} fp={m[1]} fn={m[2]} F1={f1:.3f} recall={m[0] / len(rr):.3f} "
                      f"(F1 within 8 px: {_f1(match_points(pts, rr, 8.0)):.3f})")
        for name, (tp, fp, fn) in tot.items():
            print(f"CSM both crops d={d_um} µm {name:8s}: F1={2 * tp / (2 * tp + fp + fn):.3f}")
    dcis_overlays(real / "dcis_mibi")


def _f1(m) -> float:
    return 2 * m[0] / (2 * m[0] + m[1] + m[2])


def dcis_overlays(root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from tibspace.io import open_image
    from tibspace.segment import segment_image

    out_dir = REPO / "docs" / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    for field in sorted(p for p in root.iterdir() if p.is_dir()):
        res = segment_image(field, ["HH3", "Nuc"], pixel_size_um=0.49,
                            measure_channels=["HH3", "Nuc", "PanKRT", "CD45"])
        img = open_image(field, pixel_size_um=0.49)
        _, ny, nx = img.shape
        nucsig = sum(img.read_region([img.channel_index(c)], 0, ny, 0, nx)[0].astype(float)
                     for c in ("HH3", "Nuc"))
        img.close()
        shown = ndi.gaussian_filter(nucsig, 1.0)
        shown = np.clip(shown / np.percentile(shown, 99.5), 0, 1)
        rgb = np.dstack([shown] * 3)
        rgb[find_boundaries(res.labels, mode="inner")] = (0.2, 0.5, 1.0)
        rgb[find_boundaries(res.nuclei, mode="inner")] = (0.1, 1.0, 0.1)
        fig, ax = plt.subplots(figsize=(10, 10))
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{field.name}: {len(res.cells)} cells (HH3+Nuc, 0.49 µm/px assumed); "
                     "green nuclei, blue cells", fontsize=10)
        ax.set_axis_off()
        png = out_dir / f"seg_dcis_{field.name}.png"
        fig.savefig(png, dpi=110, bbox_inches="tight")
        plt.close(fig)
        c = res.cells
        print(f"DCIS {field.name}: {len(c)} cells, median nucleus {c.nucleus_area_um2.median():.1f}"
              f" µm², median cell {c.area_um2.median():.1f} µm² -> {png.relative_to(REPO)}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant")
    ap.add_argument("--tile", type=int, default=2048, help="tibspace tile size (px)")
    ap.add_argument("--workers", type=int, default=2, help="tibspace worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--real", action="store_true", help="also score real data, write overlays")
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep the image here (default: temp dir)")
    ap.add_argument("--run-variant", choices=["tibspace", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--nuclei-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_variant:
        run_variant(args)
        return
    real = Path(os.environ.get("TIBSPACE_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
    if args.real_only:
        real_data(real)
        return

    sys.path.insert(0, str(REPO))
    from tibspace.io import write_ome_tiff
    from tibspace.segment import match_labels
    from tibspace.synthetic import make_tissue

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="tibspace-bench-seg-"))
    tmp.mkdir(parents=True, exist_ok=True)
    n = args.size
    image = tmp / f"synthetic_{n}.ome.tif"
    truth_path = tmp / f"truth_nuclei_{n}.npy"
    if not (image.exists() and truth_path.exists()):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = make_tissue((n, n), PX, seed=args.seed,
                            n_nests=max(1, min(12, (n // 1024) ** 2 // 4 + 1)))
        write_ome_tiff(image, t.image, t.channel_names, PX)
        np.save(truth_path, t.nuclei)
        print(f"generated {n}x{n}x{t.image.shape[0]} synthetic image with "
              f"{int(t.nuclei.max())} nuclei in {time.perf_counter() - t0:.1f} s -> {image}")
        del t
    truth = np.load(truth_path)
    mpx = n * n / 1e6
    print(f"image: {n}x{n} px = {mpx:.1f} Mpx, 12 channels, uint16, tiled OME-TIFF; "
          f"{int(truth.max())} true nuclei; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    variants = ["tibspace"] + ([] if args.skip_naive else ["naive"])
    rows = []
    for rep in range(args.repeats):
        for v in variants:
            nuc_out = tmp / f"nuclei_{v}.npy"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run-variant", v,
                   "--image", str(image), "--nuclei-out", str(nuc_out), "--tile",
                   str(args.tile), "--workers", str(args.workers)]
            load0 = os.getloadavg()[0]
            res, peak_mb = measure_subprocess(cmd)
            pred = np.load(nuc_out)
            tp, fp, fn, miou = match_labels(pred, truth, 0.5)
            del pred
            os.remove(nuc_out)
            # Sampled tree RSS can miss a short spike of the main process; its
            # VmHWM cannot, so take the larger of the two.
            peak_mb = max(peak_mb, res["vmhwm_self_mb"])
            res.update(variant=v, repeat=rep, peak_rss_tree_mb=round(peak_mb),
                       mpx_per_s=mpx / res["seconds"], cells_per_s=res["cells"] / res["seconds"],
                       f1=2 * tp / (2 * tp + fp + fn), mean_iou=miou, tp=tp, fp=fp, fn=fn,
                       load_before=load0)
            rows.append(res)
            print(f"[{v:8s} run {rep + 1}] {res['seconds']:7.1f} s  {res['mpx_per_s']:5.2f} Mpx/s  "
                  f"{res['cells_per_s']:7.0f} cells/s  peak {peak_mb / 1024:5.2f} GB (process tree; "
                  f"main process {res['vmhwm_self_mb'] / 1024:4.2f})  CPU {res['cpu_seconds']:.0f} s"
                  f"  nucleus F1 {res['f1']:.3f} "
                  f"(mean IoU {miou:.3f}, {res['cells']} cells, {res['n_channels_measured']} "
                  f"channels measured)  load {load0:.1f}", flush=True)
            extra = {k: res[k] for k in res if k.startswith("seconds_") or k == "qc"}
            if extra:
                print("    " + json.dumps(extra))
    if len(variants) == 2:
        best = {v: min((r for r in rows if r["variant"] == v), key=lambda r: r["seconds"])
                for v in variants}
        a, b = best["tibspace"], best["naive"]
        print(f"\ntibspace vs naive (best of {args.repeats}): throughput x{b['seconds'] / a['seconds']:.2f}"
              f" (CPU seconds x{b['cpu_seconds'] / a['cpu_seconds']:.2f}), "
              f"peak memory {a['peak_rss_tree_mb'] / 1024:.2f} vs {b['peak_rss_tree_mb'] / 1024:.2f} GB, "
              f"F1 {a['f1']:.3f} vs {b['f1']:.3f}")
    with open(tmp / "bench_segmentation.json", "w") as fh:
        json.dump(rows, fh, indent=1, default=float)
    if args.real:
        real_data(real)


if __name__ == "__main__":
    main()
