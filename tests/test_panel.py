"""Tests of tibspace.panel: TOML panel loading/round trip, channel resolution
and the phenotype rule language."""

from __future__ import annotations

import itertools
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tibspace.errors import InputError, PanelError
from tibspace.cells import (DEFAULT_PARAMETERS, DEFAULT_ROLES, MarkerSpec, MaskSpec, Panel, TableMapping, load_panel, parse_rule, rule_markers)

FULL = """
[image]
pixel_size_um = 0.5            # optional; used only when the file has none

[channels]
nuclear = ["DAPI"]
membrane = ["NaKATPase"]

[channels.aliases]
PanCK = ["PanKRT", "pan-cytokeratin"]
aSMA = ["SMA", "ACTA2"]

[markers]
HepPar1 = { gate = "otsu" }
CD3 = { gate = "otsu" }
CD8 = { gate = 35.0 }
CD68 = { gate = "GMM" }
SPP1 = { gate = "gmm", compartment = "cell" }
aSMA = { gate = 12 }
FAP = { gate = "otsu", compartment = "nucleus" }
MPO = 40.5

[phenotypes]
tumour = "HepPar1+"
SPP1_macrophage = "CD68+ & SPP1+"
CAF = "(aSMA+ | FAP+) & not HepPar1+"
CD8_T = "CD3+ & CD8+"
other_T = "CD3+ & CD8-"
neutrophil = "MPO+"
default = "unassigned"

[roles]
effector_t = ["CD8_T"]
barrier = ["SPP1_macrophage", "CAF"]

[masks]
net = { channels = ["CitH3"], require = ["MPO"], gate = "otsu", min_object_um2 = 5 }
col1 = { channels = ["COL1"], gate = 20, min_object_um2 = 2.5 }

[parameters]
cell_expansion_um = 4
margin_um = 60.0
colocalization_radii_um = [10, 25]
n_shifts = 199

[table]
cell_id = "Cell ID"
x = "Cell X Position"
y = "Cell Y Position"
units = "px"
pixel_size_um = 0.5
phenotype = "Phenotype"
phenotype_map = { "CK+" = "tumour", "CD8+" = "CD8_T", "Other \\"odd\\" label" = "other" }
"""


def _write(tmp_path, text, name="panel.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------


def test_load_full_panel(tmp_path):
    p = load_panel(_write(tmp_path, FULL))
    assert p.source == tmp_path / "panel.toml"
    assert p.pixel_size_um == 0.5
    assert p.nuclear == ["DAPI"] and p.membrane == ["NaKATPase"]
    assert p.aliases["PanCK"] == ["PanKRT", "pan-cytokeratin"]
    assert p.markers["CD8"] == MarkerSpec("CD8", 35.0, "cell")
    assert p.markers["CD68"].gate == "gmm"  # case-normalised
    assert p.markers["FAP"] == MarkerSpec("FAP", "otsu", "nucleus")
    assert p.markers["MPO"] == MarkerSpec("MPO", 40.5, "cell")  # shorthand
    assert list(p.phenotypes) == ["tumour", "SPP1_macrophage", "CAF", "CD8_T", "other_T",
                                  "neutrophil"]  # order kept: first match wins
    assert p.default_phenotype == "unassigned"
    # given roles replaced, others default
    assert p.roles["effector_t"] == ["CD8_T"]
    assert p.roles["t_cells"] == DEFAULT_ROLES["t_cells"]
    assert p.masks["net"] == MaskSpec("net", ["CitH3"], ["MPO"], "otsu", 5.0)
    assert p.masks["col1"] == MaskSpec("col1", ["COL1"], [], 20.0, 2.5)
    assert p.parameters["cell_expansion_um"] == 4.0
    assert isinstance(p.parameters["cell_expansion_um"], float)
    assert p.parameters["colocalization_radii_um"] == [10.0, 25.0]
    assert p.parameters["n_shifts"] == 199 and isinstance(p.parameters["n_shifts"], int)
    assert p.parameters["closing_um"] == DEFAULT_PARAMETERS["closing_um"] == 20.0
    assert p.table == TableMapping("Cell ID", "Cell X Position", "Cell Y Position", "px", 0.5,
                                   "Phenotype", {"CK+": "tumour", "CD8+": "CD8_T",
                                                 'Other "odd" label': "other"})


def test_defaults_cover_metrics_md():
    expected = dict(cell_expansion_um=3, nucleus_diameter_um="auto", lineage_conflicts="margin", tumour_cell_radius_um=15,
                    closing_um=20, min_hole_um2=1000, min_nest_area_um2=2000, margin_um=50,
                    min_nest_tumour_cells=10, min_nest_tumour_density=1200, min_nest_purity=0.2,
                    profile_min_um=-200, profile_max_um=200, profile_step_um=20,
                    outside_band_um=200, desert_density=50, excluded_ratio=0.5,
                    exclusion_bandwidth_um=30, exclusion_grid_um=10, exclusion_fraction=0.25,
                    exclusion_min_area_um2=2500, exclusion_zone_alpha=0.05, segment_um=50, barrier_width_um=50,
                    barrier_density=400, colocalization_radii_um=[20, 30, 50], n_shifts=999,
                    shield_ring_um=3, shield_min_coverage=0.5, nest_strip_um=5, contact_um=12,
                    antagonism_tile_um=50, antagonism_radii_um=[20, 30, 40, 50],
                    graph_radius_um=30, n_permutations=999, n_envelope_sim=99, seed=0, tile_size_px=2048)
    assert DEFAULT_PARAMETERS == expected
    empty = Panel.from_dict({})
    assert empty.parameters == expected and empty.roles == DEFAULT_ROLES
    assert empty.default_phenotype == "other" and empty.table is None
    # defaults are copies: changing one panel does not change another
    empty.parameters["margin_um"] = 1.0
    empty.roles["tumour"].append("x")
    assert Panel.from_dict({}).parameters["margin_um"] == 50.0
    assert DEFAULT_ROLES["tumour"] == ["tumour"]


def test_roundtrip_to_toml(tmp_path):
    p = load_panel(_write(tmp_path, FULL))
    text = p.to_toml()
    q = load_panel(_write(tmp_path, text, "again.toml"))
    assert q == p
    assert q.to_dict() == p.to_dict()
    # to_dict is plain TOML data
    assert tomllib.loads(text) == p.to_dict()
    # gates actually used can be written back and re-loaded
    used = p.with_gates({"CD3": 101.25, "SPP1": 7.0})
    r = load_panel(_write(tmp_path, used.to_toml(), "used.toml"))
    assert r.markers["CD3"].gate == 101.25 and r.markers["SPP1"].gate == 7.0
    assert r.markers["CD8"].gate == 35.0
    assert p.markers["CD3"].gate == "otsu"  # original untouched


@settings(max_examples=30, deadline=None)
@given(names=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                              min_size=1, max_size=8), min_size=1, max_size=4, unique=True),
       gate=st.floats(-1e6, 1e6, allow_nan=False), px=st.floats(1e-3, 100))
def test_roundtrip_arbitrary_names(names, gate, px):
    """Odd channel names (quotes, spaces, unicode, control chars) survive the TOML writer."""
    d = {"image": {"pixel_size_um": px},
         "channels": {"nuclear": names, "aliases": {names[0]: names[1:]}},
         "table": {"phenotype_map": {n: "x" for n in names}},
         "masks": {"m": {"channels": names, "gate": gate}}}
    p = Panel.from_dict(d)
    assert Panel.from_dict(tomllib.loads(p.to_toml())) == p


# --------------------------------------------------------------------------
# load errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("text, pattern", [
    ("[markers]\nCD8 = { gate = 35 \n", r"TOML syntax error: .*line 2"),
    ("[marker]\nCD8 = 3\n", r"unknown section \[marker\]; valid sections are \[image\]"),
    ("[markers]\nCD8 = { gate = \"mean\" }\n", r"\[markers\] CD8: gate = 'mean' .*\"otsu\""),
    ("[markers]\nCD8 = { gate = 3, compartment = \"membrane\" }\n", r"compartment = 'membrane'"),
    ("[markers]\nCD8 = { gaet = 3 }\n", r"\[markers\] CD8: unknown key 'gaet'"),
    ("[markers]\nCD8 = { gate = true }\n", r"must be a number, got True"),
    ("[markers]\nCD3 = 1\n[phenotypes]\nCD8_T = \"CD3+ & CD8+\"\n",
     r"\[phenotypes\] CD8_T: phenotype rule 'CD3\+ & CD8\+' uses marker 'CD8', which is not in "
     r"\[markers\]"),
    ("[markers]\nCD3 = 1\n[phenotypes]\nT = \"CD3+ &\"\n", r"\[phenotypes\] T: .*character 7"),
    ("[markers]\nCD3 = 1\n[phenotypes]\nT = 3\n", r"\[phenotypes\] T must be a rule string"),
    ("[parameters]\nmargin = 3\n", r"unknown parameter 'margin' .*valid keys are "
                                    r"cell_expansion_um, .*margin_um"),
    ("[parameters]\nmargin_um = \"50\"\n", r"margin_um must be a number"),
    ("[parameters]\nmargin_um = -5\n", r"margin_um must be positive"),
    ("[parameters]\nn_shifts = 9.5\n", r"n_shifts must be an integer"),
    ("[parameters]\ncolocalization_radii_um = []\n", r"non-empty list"),
    ("[parameters]\nprofile_min_um = 300\n", r"profile_min_um \(300.0\) must be below"),
    ("[channels]\nnuclear = 3\n", r"\[channels\] nuclear must be a list of names"),
    ("[channels]\nnucleus = [\"DAPI\"]\n", r"\[channels\]: unknown key 'nucleus'"),
    ("[image]\npixel_size_um = 0\n", r"pixel_size_um must be positive"),
    ("[masks]\nnet = { gate = 3 }\n", r"\[masks\] net: needs channels"),
    ("[table]\nunits = \"px\"\n", r"units = \"px\" needs a pixel size"),
    ("[table]\nunits = \"inch\"\n", r"units = 'inch'; use \"um\" or \"px\""),
    ("image = 3\n", r"\[image\] must be a table"),
])
def test_load_errors(tmp_path, text, pattern):
    f = _write(tmp_path, text)
    with pytest.raises(PanelError, match=pattern) as info:
        load_panel(f)
    msg = str(info.value)
    assert "\n" not in msg and str(f) in msg


def test_load_missing_and_bad_files(tmp_path):
    with pytest.raises(PanelError, match=r"nope\.toml: panel file not found"):
        load_panel(tmp_path / "nope.toml")
    with pytest.raises(PanelError, match="is a folder"):
        load_panel(tmp_path)
    f = tmp_path / "bin.toml"
    f.write_bytes(b"\xff\xfe\x00[markers]")
    with pytest.raises(PanelError, match="not UTF-8"):
        load_panel(f)
    assert issubclass(PanelError, InputError)


# --------------------------------------------------------------------------
# channel resolution
# --------------------------------------------------------------------------


def test_resolve_channels_case_and_aliases(tmp_path):
    p = load_panel(_write(tmp_path, FULL))
    image = ["dapi", "Na-K-ATPase", "HEP PAR 1", "cd3", "CD8", "cd_68", "SPP1", "ACTA2",
             "fap", "mpo", "cit-h3", "Col1"]
    idx = p.resolve_channels(image)
    assert idx == {"DAPI": 0, "NaKATPase": 1, "HepPar1": 2, "CD3": 3, "CD8": 4, "CD68": 5,
                   "SPP1": 6, "aSMA": 7, "FAP": 8, "MPO": 9, "CitH3": 10, "COL1": 11}
    assert p.missing_channels(image) == {}


def test_resolve_alias_reverse_and_exact_first():
    p = Panel.from_dict({"channels": {"nuclear": ["DNA"], "aliases": {"DAPI": ["DNA", "Hoechst"]}},
                         "markers": {"PanKRT": 1}})
    # the panel names an alias; the image uses the alias' key or a sibling alias
    assert p.resolve_channels(["Hoechst", "PanKRT"]) == {"DNA": 0, "PanKRT": 1}
    assert p.resolve_channels(["x", "DAPI", "pankrt"]) == {"DNA": 1, "PanKRT": 2}
    # an exact spelling wins over a normalised match
    assert p.resolve_channels(["pan-krt", "PanKRT", "DNA"])["PanKRT"] == 1


def test_missing_channel_message_and_optional(tmp_path):
    p = load_panel(_write(tmp_path, FULL))
    image = ["DAPI", "NaKATPase", "HepPar1", "CD3", "CD8", "CD68", "aSMA", "FAP", "MPO",
             "COL1"]
    with pytest.raises(PanelError) as info:
        p.resolve_channels(image, "/data/s1.ome.tif")
    msg = str(info.value)
    assert msg == (f"panel {tmp_path / 'panel.toml'} names channel 'SPP1' (marker) but image "
                   "/data/s1.ome.tif has none; it has: DAPI, NaKATPase, HepPar1, CD3, CD8, "
                   "CD68, aSMA, FAP, MPO, COL1 — add an alias under [channels.aliases] or fix "
                   "the name")
    assert p.missing_channels(image) == {"SPP1": "marker", "CitH3": "mask net"}
    assert p.rules_using("spp1") == ["SPP1_macrophage"]
    idx = p.resolve_channels(image, optional_roles=("marker", "mask"))
    assert "SPP1" not in idx and "CitH3" not in idx and idx["COL1"] == 9
    with pytest.raises(PanelError, match="'CitH3' \\(mask net\\)"):
        p.resolve_channels(image, optional_roles=("marker",))
    with pytest.raises(PanelError, match="'DAPI' \\(nuclear\\).* the image has none"):
        p.resolve_channels(image[1:], optional_roles=("marker", "mask"))


# --------------------------------------------------------------------------
# rule language
# --------------------------------------------------------------------------


def _truth(rule, names):
    """Evaluate ``rule`` for every truth assignment of ``names`` (as arrays)."""
    combos = np.array(list(itertools.product([False, True], repeat=len(names))))
    env = {n: combos[:, i] for i, n in enumerate(names)}
    return parse_rule(rule)(env), combos


@pytest.mark.parametrize("rule, expect", [
    ("A+", lambda a, b, c: a),
    ("A-", lambda a, b, c: not a),
    ("A+ & B+", lambda a, b, c: a and b),
    ("A+ and B-", lambda a, b, c: a and not b),
    ("A+ | B+ & C+", lambda a, b, c: a or (b and c)),  # & binds tighter than |
    ("A+ & B+ | C+", lambda a, b, c: (a and b) or c),
    ("(A+ | B+) & C+", lambda a, b, c: (a or b) and c),
    ("not A+ & B+", lambda a, b, c: (not a) and b),  # not binds tighter than &
    ("not (A+ & B+)", lambda a, b, c: not (a and b)),
    ("~A+ | !B-", lambda a, b, c: (not a) or b),
    ("not not A+", lambda a, b, c: a),
    ("A+ OR B+ AND NOT C+", lambda a, b, c: a or (b and not c)),
    ("A+&&B+||C-", lambda a, b, c: (a and b) or not c),
])
def test_rule_truth_tables(rule, expect):
    got, combos = _truth(rule, ["A", "B", "C"])
    want = np.array([expect(*row) for row in combos])
    np.testing.assert_array_equal(got, want)


def test_rule_marker_names():
    assert rule_markers("HLA-DR+ & CD8- & PD-L1+") == {"HLA-DR", "CD8", "PD-L1"}
    env = {"HLA-DR": np.array([True, False]), "CD8": np.array([False, False]),
           "PD-L1": np.array([True, True])}
    np.testing.assert_array_equal(parse_rule("HLA-DR+ & CD8- & PD-L1+")(env), [True, False])
    assert rule_markers("(aSMA+ | FAP+) & not HepPar1+") == {"aSMA", "FAP", "HepPar1"}
    # evaluation finds the positivity under the [markers] spelling
    np.testing.assert_array_equal(parse_rule("cd8+")({"CD8": [True, False]}), [True, False])
    with pytest.raises(PanelError, match="uses marker 'CD4' but no positivity"):
        parse_rule("CD4+")({"CD8": [True]})


@pytest.mark.parametrize("rule, pattern", [
    ("CD3+ &", r"'CD3\+ &': rule ends too early .* at character 7"),
    ("CD3", r"marker 'CD3' needs a \+ or - sign \(e\.g\. CD3\+\) at character 1"),
    ("(CD3+ | CD8+", r"missing '\)' at character 13"),
    ("CD3+ CD8+", r"unexpected marker 'CD8' \(missing & or \|\?\) at character 6"),
    ("CD3+ & )", r"found '\)' at character 8"),
    ("CD3+ ) ", r"unexpected '\)' at character 6"),
    ("CD3+ # CD8+", r"unexpected character '#' at character 6"),
    ("", r"rule ends too early"),
    ("not", r"rule ends too early"),
])
def test_rule_syntax_errors(rule, pattern):
    with pytest.raises(PanelError, match=pattern):
        parse_rule(rule)


# random expressions: compare with Python's own boolean evaluation
_MARKERS = ["CD3", "CD8", "PanCK", "HLA-DR"]


@st.composite
def _expr(draw, depth=0):
    """(our rule text, equivalent Python expression) with random structure."""
    n_terms = draw(st.integers(1, 3 if depth < 2 else 1))
    ours, py = [], []
    for i in range(n_terms):
        if i:
            op = draw(st.sampled_from(["&", "|", "and", "or", "AND", "&&"]))
            ours.append(op)
            py.append("and" if op.lower() in ("&", "and", "&&") else "or")
        n_not = draw(st.integers(0, 2))
        for _ in range(n_not):
            tok = draw(st.sampled_from(["not ", "~", "!", "NOT "]))
            ours.append(tok)
            py.append("not ")
        if depth < 2 and draw(st.booleans()):
            o, p = draw(_expr(depth + 1))
            ours.append(f"({o})")
            py.append(f"({p})")
        else:
            m = draw(st.sampled_from(_MARKERS))
            sign = draw(st.sampled_from("+-"))
            ours.append(f"{m}{sign}")
            py.append(f"m[{m!r}]" if sign == "+" else f"(not m[{m!r}])")
    spacer = draw(st.sampled_from([" ", "  "]))
    return spacer.join(ours), " ".join(py)


@settings(max_examples=200, deadline=None)
@given(_expr())
def test_rule_parser_matches_python_precedence(pair):
    ours, py = pair
    combos = list(itertools.product([False, True], repeat=len(_MARKERS)))
    env = {m: np.array([c[i] for c in combos]) for i, m in enumerate(_MARKERS)}
    got = parse_rule(ours)(env)
    want = [eval(py, {}, {"m": dict(zip(_MARKERS, c))}) for c in combos]  # noqa: S307
    np.testing.assert_array_equal(got, np.array(want, dtype=bool))
    assert rule_markers(ours) <= set(_MARKERS)
