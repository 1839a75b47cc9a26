"""Reproduce docs/validation/cells.md (gating), from the repository root:
PYTHONPATH=. python docs/validation/cells_gating.py (~30 s).

Per-cell tables from the synthetic image model with true labels (sample, and 1024² tissues with
CD8 or SPP1 staining removed: their cross-talk stays), gated with the old plain Otsu and with the
current gates; then the real tables in /work/shared/data/real against the source tools' labels.
"""
import numpy as np, pandas as pd
from scipy import ndimage as ndi
import tibspace.synthetic.tissue as T
from tibspace.synthetic import make_tissue, load_truth, CHANNELS
from tibspace.cells import load_panel, Panel, gate_cells, auto_gate


def table(image, labels, truth):
    ids = truth.cell_id.to_numpy()
    df = pd.DataFrame({c: ndi.mean(np.asarray(image[i], float), labels, ids) for i, c in enumerate(CHANNELS)})
    df["truth"] = truth.phenotype.to_numpy()
    return df


def synthetic_tables():
    out = {}
    s = load_truth("sample_data", load_image=True)
    out["sample"] = table(s.image, s.cells, s.truth)
    for remove in [None, "CD8", "SPP1"]:
        saved = dict(T._LEVELS)
        if remove:
            T._LEVELS[remove] = {}
        for seed in (1, 2):
            for mode in ("inflamed", "excluded", "desert"):
                t = make_tissue((1024, 1024), 0.5, seed=seed, n_nests=2, immune_phenotype=mode)
                out[f"{mode}_s{seed}_no{remove}"] = table(t.image, t.cells, t.truth)
        T._LEVELS.clear(); T._LEVELS.update(saved)
    return out


def synthetic_report():
    panel = load_panel("sample_data/hcc_sample_panel.toml")
    rows = []
    for k, df in synthetic_tables().items():
        truth = df.truth.to_numpy().copy()
        if "noCD8" in k: truth[truth == "CD8_T"] = "other_T"
        if "noSPP1" in k: truth[truth == "SPP1_macrophage"] = "other"
        new = gate_cells(df, panel, seed=0)
        old = gate_cells(df, panel.with_gates({m: auto_gate(df[m].to_numpy(), "otsu") for m in panel.markers}))
        r = dict(table=k, n=len(df), acc_old=round((old.phenotype == truth).mean(), 4),
                 acc_new=round((new.phenotype == truth).mean(), 4))
        for m in ("CD8", "SPP1"):
            r[f"{m}%_old"] = round(100 * old.gates[m].fraction_positive, 2)
            r[f"{m}%_new"] = round(100 * new.gates[m].fraction_positive, 2)
            r[f"{m}_fold"] = round(new.gates[m].evidence["fold_above_below"], 2)
        r["no_pos"] = ",".join(m for m, g in new.gates.items() if g.decision.startswith("no"))
        rows.append(r)
    print(pd.DataFrame(rows).to_string())

R = "/work/shared/data/real/"


def run(name, cells, markers, rules, default, truth):
    panel=Panel.from_dict({"markers":{m:{"gate":"otsu"} for m in markers},"phenotypes":dict(rules)|{"default":default},"roles":{}})
    new=gate_cells(cells,panel)
    old=gate_cells(cells,panel.with_gates({m:auto_gate(cells[m].to_numpy(),"otsu") for m in markers}))
    out=[]
    for cls in sorted(set(truth)):
        sel=truth==cls
        out.append(f"{cls}: n={sel.sum()} recall {np.mean(old.phenotype[sel]==cls):.3f}->{np.mean(new.phenotype[sel]==cls):.3f}")
    print(f"== {name}: overall agreement {np.mean(old.phenotype==truth):.3f} -> {np.mean(new.phenotype==truth):.3f}")
    print("   "+"; ".join(out))
    for m,g in new.gates.items():
        print(f"   {m}: {g.decision}; gate {old.gates[m].value:.4g}->{g.value:.4g}; pos% {100*old.gates[m].fraction_positive:.1f}->{100*g.fraction_positive:.1f}; dBIC {g.evidence.get('delta_bic',np.nan):.0f} fold {g.evidence.get('fold_above_below',np.nan):.2f}")
    if new.warnings: print("   warnings:", new.warnings)


def real_report():
    f=pd.read_csv(R+"csm_breast_mif/CSM_RAWcellfeaturedata_test.csv"); ph=pd.read_csv(R+"csm_breast_mif/CSM_Phenotypecell_test.csv")
    cells=pd.DataFrame({"CK":f["CK-EPCAM_AVERAGE"],"CD8":f["CD8a_AVERAGE"],"GZMB":f["GZMB_AVERAGE"]})
    run("CSM",cells,["CK","CD8","GZMB"],[("CD8_GZMBpos","CD8+ & GZMB+"),("CD8_GZMBneg","CD8+ & GZMB-"),("TUMOR","CK+")],"OTHER",ph.Phenotype.to_numpy())
    p=pd.read_csv(R+"phenoptr_lung_vectra/Set4_cell_seg_data.csv")
    col=lambda m:[c for c in p.columns if c.startswith(f"Entire Cell {m} (") and c.endswith("Mean")][0]
    cells=pd.DataFrame({m:p[col(m)] for m in ["CD8","FoxP3","CD68","CK"]})
    run("phenoptr Set4",cells,["CD8","FoxP3","CD68","CK"],[("CD8+","CD8+"),("FoxP3+","FoxP3+"),("CD68+","CD68+"),("CK+","CK+")],"other",p.Phenotype.to_numpy())
    s=pd.read_csv(R+"scimap_exemplar001/exemplar-001_cells_with_scimap_phenotype.csv")
    t=s.phenotype.replace({"Treg":"Immune","Other myeloid cells":"Immune","NK cells":"Immune","Dendritic cells":"Immune"}).to_numpy()
    run("scimap exemplar001",s,["ECAD","SMA","CD45"],[("Immune","CD45+"),("ECAD+","ECAD+"),("SMA+","SMA+")],"Unknown",t)


def image_desert_report(seeds=(1, 2)):
    """Whole pipeline on 1024² images, immune_phenotype="excluded" with CD8 staining removed: the
    T cells are all CD8-negative, so the effector-T call must be "desert" (~3 min per seed)."""
    import tempfile
    import tibspace
    panel = load_panel("sample_data/hcc_sample_panel.toml")
    panel.parameters.update(n_permutations=19, n_shifts=19, n_envelope_sim=0)
    saved = dict(T._LEVELS)
    T._LEVELS["CD8"] = {}
    try:
        for seed in seeds:
            t = make_tissue((1024, 1024), 0.5, seed=seed, n_nests=2, immune_phenotype="excluded")
            d = tempfile.mkdtemp(); t.write(d)
            img = d + "/image.ome.tif"
            now = tibspace.run_image(img, panel, seed=0)
            old_gates = {m: auto_gate(now.cells[m].to_numpy(), "otsu") for m in panel.markers}
            old = tibspace.run_image(img, panel.with_gates(old_gates), seed=0)
            for label, r in (("old otsu", old), ("now", now)):
                print(seed, label, "CD8_T", r.metrics["phenotype_counts"].get("CD8_T", 0),
                      r.metrics["analyses"]["exclusion"]["per_nest"]["immune_phenotype"])
    finally:
        T._LEVELS.clear(); T._LEVELS.update(saved)


if __name__ == "__main__":
    import sys
    synthetic_report()
    real_report()
    if "--images" in sys.argv:
        image_desert_report()
