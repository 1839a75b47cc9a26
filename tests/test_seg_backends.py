import sys

import numpy as np
import pytest

from tibspace.errors import InputError
from tibspace.segment.backends import get_backend, register_backend


def test_registered_fake_backend_is_returned_and_runs():
    def fake(nuclear, membrane, pixel_size_um, params):
        return (nuclear > params["thr"]).astype(np.int32)
    register_backend("fake_seg_test", fake)
    lab = get_backend("fake_seg_test")(np.array([[0.0, 2.0]]), None, 0.5, {"thr": 1.0})
    assert lab.tolist() == [[0, 1]]


def test_unknown_backend_is_one_line_input_error():
    with pytest.raises(InputError) as e:
        get_backend("nope")
    assert "\n" not in str(e.value) and "cellpose" in str(e.value)


def test_cellpose_without_extra_says_how_to_install(monkeypatch):
    import threading

    import tibspace.segment.backends as bk

    # the missing extra is simulated, so this runs whether or not cellpose is installed
    monkeypatch.setitem(sys.modules, "cellpose", None)
    monkeypatch.setattr(bk, "_local", threading.local())  # no model cached by another test
    with pytest.raises(InputError,
                       match=r"needs the extra: pip install 'tibspace\[cellpose\]'") as e:
        get_backend("cellpose")(np.zeros((4, 4)), None, 0.5, {})
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------
# backends through segment_image (tiles, ownership, measurement)
# --------------------------------------------------------------------------

import warnings  # noqa: E402

from tibspace.io import write_ome_tiff  # noqa: E402
from tibspace.segment import match_labels, match_points, segment_image  # noqa: E402


def _components(nuclear, membrane, pixel_size_um, params):
    """A backend: connected components of the nuclear signal above a threshold."""
    from scipy import ndimage as ndi

    _components.calls.append(dict(params) | {"shape": nuclear.shape})
    return ndi.label(nuclear > params.get("cellprob_threshold", 0.3))[0]


_components.calls = []


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    """600² image of separated discs (radius 7 px, 0.5 µm/px) and their truth labels."""
    yy, xx = np.mgrid[:600, :600]
    truth = np.zeros((600, 600), np.int32)
    k = 0
    for cy in range(15, 600, 30):
        for cx in range(15 + (cy // 30 % 2) * 8, 590, 30):
            k += 1
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = k
    img = np.stack([(truth > 0) * 200, (truth > 0) * 50]).astype(np.uint8)
    path = tmp_path_factory.mktemp("bk") / "discs.ome.tif"
    write_ome_tiff(path, img, ["DAPI", "CD8"], 0.5)
    register_backend("components_test", _components, keys=("cellprob_threshold",))
    return path, truth


def test_backend_runs_in_every_tile_and_tiles_agree(discs):
    path, truth = discs
    _components.calls.clear()
    one = segment_image(path, "DAPI", method="components_test", tile_size_px=4096)
    assert len(_components.calls) == 1 and one.parameters["method"] == "components_test"
    # the backend gets the nucleus size (estimated here) with its options
    assert _components.calls[0]["nucleus_diameter_px"] == pytest.approx(
        one.parameters["nucleus_diameter_px"])
    _components.calls.clear()
    tiled = segment_image(path, "DAPI", method="components_test", tile_size_px=160,
                          scheduler="synchronous")
    assert tiled.n_tiles == 16 and len(_components.calls) == 16
    # every tile window is a crop (core + overlap), never the whole image
    assert all(max(c["shape"]) < 600 for c in _components.calls)
    n = int(truth.max())
    for res in (one, tiled):
        tp, fp, fn, miou = match_labels(np.asarray(res.nuclei), truth, 0.5)
        assert (tp, fp, fn) == (n, 0, 0) and miou == 1.0
        assert res.cells["cell_id"].tolist() == list(range(1, n + 1))
        assert np.allclose(res.cells["nucleus_area_um2"], 149 * 0.25)
    tp, fp, fn, _ = match_points(tiled.cells[["x_um", "y_um"]], one.cells[["x_um", "y_um"]], 0.01)
    assert (fp, fn) == (0, 0)


def test_backend_options_reach_the_backend_and_are_recorded(discs):
    path, _ = discs
    _components.calls.clear()
    res = segment_image(path, "DAPI", method="components_test", tile_size_px=4096,
                        backend_options={"cellprob_threshold": 0.5})
    assert _components.calls[0]["cellprob_threshold"] == 0.5
    assert res.parameters["backend_options"] == {"cellprob_threshold": 0.5}


@pytest.mark.parametrize("method, options, match", [
    ("nope", {}, r"method = 'nope': unknown; expected one of classical, "),
    ("classical", {"model": "x.pth"}, r"'model' is not an option of method 'classical'"),
    ("cellpose", {"model": "/nonexistent/w.pth"}, r"model = '/nonexistent/w.pth': no such weights"),
])
def test_bad_method_or_option_is_one_line_input_error(discs, method, options, match):
    with pytest.raises(InputError, match=match) as e:
        segment_image(discs[0], "DAPI", method=method, backend_options=options)
    assert "\n" not in str(e.value)


def test_backend_returning_a_wrong_shape_is_an_input_error(discs):
    register_backend("bad_shape_test", lambda n, m, px, p: np.zeros((3, 3), np.int32))
    with pytest.raises(InputError, match="returned a int32 label image of shape"):
        segment_image(discs[0], "DAPI", method="bad_shape_test")


def test_panel_segmentation_section_reaches_segment_image(tmp_path, monkeypatch):
    from tibspace.cells import Panel

    panel_file = tmp_path / "panel.toml"
    p = Panel.from_dict({"channels": {"nuclear": ["DAPI"]},
                         "segmentation": {"method": "cellpose", "model": "w/my.pth",
                                          "cellprob_threshold": -1}}, source=panel_file)
    # a relative weights path is relative to the panel file
    assert p.segmentation == {"method": "cellpose", "model": str(tmp_path / "w" / "my.pth"),
                              "cellprob_threshold": -1.0}
    assert Panel.from_dict(p.to_dict()).segmentation == p.segmentation
    from tibspace.errors import PanelError

    with pytest.raises(PanelError, match=r"\[segmentation\]: unknown key 'diameter'"):
        Panel.from_dict({"segmentation": {"diameter": 3}})
    with pytest.raises(PanelError, match=r"\[segmentation\] method must be a string"):
        Panel.from_dict({"segmentation": {"method": 3}})


def test_run_image_passes_the_panel_method(tmp_path, discs):
    from tibspace.cells import Panel
    from tibspace.pipeline import run_image

    p = Panel.from_dict({"channels": {"nuclear": ["DAPI"]},
                         "segmentation": {"method": "nope_test"}})
    with pytest.raises(InputError, match="method = 'nope_test': unknown"):
        run_image(discs[0], p, out_dir=None)


# --------------------------------------------------------------------------
# cellpose itself, with weights the test makes (no download)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cellpose_weights(tmp_path_factory):
    try:
        import cellpose  # noqa: F401
    except ImportError:
        pytest.skip("cellpose is not installed (pip install 'tibspace[cellpose]')")
    import torch
    from cellpose import resnet_torch

    torch.manual_seed(0)
    net = resnet_torch.CPnet(nbase=[2, 32, 64, 128, 256], nout=3, sz=3, mkldnn=False,
                             max_pool=True, diam_mean=17.0)
    path = tmp_path_factory.mktemp("cp") / "tiny_cellpose.pth"
    net.save_model(str(path))
    return path, {k: v.clone() for k, v in net.state_dict().items()}


def test_cellpose_loads_local_weights_once_per_thread(tiny_cellpose_weights):
    import tibspace.segment.backends as bk

    path, state = tiny_cellpose_weights
    model = bk._cellpose_model(str(path))
    assert bk._cellpose_model(str(path)) is model  # cached in this thread
    loaded = model.net.state_dict()
    for k, v in state.items():
        assert (loaded[k].cpu() == v).all(), k
    lab = get_backend("cellpose")(np.random.default_rng(0).random((96, 80), np.float32), None,
                                  0.5, {"model": str(path), "nucleus_diameter_px": 16.0})
    assert lab.shape == (96, 80) and lab.dtype == np.int32


def test_cellpose_runs_per_tile_with_the_nucleus_diameter(tiny_cellpose_weights, discs,
                                                          monkeypatch):
    import tibspace.segment.backends as bk

    path, _ = tiny_cellpose_weights
    model = bk._cellpose_model(str(path))
    calls = []
    real_eval = model.eval

    def spy(x, **kw):
        calls.append((x.shape, kw["diameter"]))
        masks = real_eval(x, **kw)[0]
        # random weights find no nuclei: stand in the truth of the window so
        # that stitching and measuring run on the cellpose path
        from scipy import ndimage as ndi
        return (ndi.label(x > 0.3)[0] if masks.max() == 0 else masks), None, None

    monkeypatch.setattr(model, "eval", spy)
    res = segment_image(discs[0], "DAPI", method="cellpose", backend_options={"model": str(path)},
                        tile_size_px=300, scheduler="synchronous", nucleus_diameter_um=7.0)
    assert len(calls) == res.n_tiles == 4
    assert all(d == pytest.approx(14.0) for _, d in calls)
    assert len(res.cells) == int(discs[1].max())


@pytest.fixture()
def cellpose_offline(monkeypatch, tmp_path):
    """Real cellpose, an empty model folder and no network: downloads are recorded, then fail."""
    import threading
    from urllib.error import URLError

    import tibspace.segment.backends as bk

    from cellpose import models, utils

    downloads = []

    def no_network(url, dst, progress=True):
        downloads.append((url, dst))
        raise URLError("no network in this test")

    monkeypatch.setattr(utils, "download_url_to_file", no_network)
    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    monkeypatch.setattr(models, "MODEL_LIST_PATH", str(tmp_path / "gui_models.txt"))
    monkeypatch.setattr(bk, "_local", threading.local())  # no model cached by another test
    return tmp_path, downloads


def test_cellpose_named_model_loads_from_the_model_folder(tiny_cellpose_weights,
                                                           cellpose_offline):
    """A library model name is looked up in cellpose's model folder (as copied for offline use)."""
    import shutil

    import tibspace.segment.backends as bk

    path, state = tiny_cellpose_weights
    folder, downloads = cellpose_offline
    shutil.copy(path, folder / "nucleitorch_0")  # the file cellpose 3 keeps for "nuclei"
    model = bk._cellpose_model("nuclei")
    assert downloads == [] and model.diam_mean == 17.0
    loaded = model.net.state_dict()
    assert all((loaded[k].cpu() == v).all() for k, v in state.items())


def test_cellpose_named_model_offline_is_one_line_error(tiny_cellpose_weights, cellpose_offline):
    import tibspace.segment.backends as bk

    folder, downloads = cellpose_offline
    with pytest.raises(InputError, match=r"model = 'nuclei': cellpose could not load it .*"
                                         r"without internet give a local weights file") as e:
        bk._cellpose_model("nuclei")
    assert "\n" not in str(e.value)
    # cellpose tried to fetch its nuclei weights into its model folder
    assert [(u.rsplit("/", 1)[-1], d) for u, d in downloads] == [
        ("nucleitorch_0", str(folder / "nucleitorch_0"))]


def test_cellpose_unknown_model_name_is_an_error_not_the_default_model(tiny_cellpose_weights,
                                                                        cellpose_offline):
    """Cellpose 3 would swap an unknown name for its default cyto3 model (and download it)."""
    import tibspace.segment.backends as bk

    _, downloads = cellpose_offline
    with pytest.raises(InputError, match=r"model = 'nucleus': not a cellpose model name nor a "
                                         r"weights file; cellpose names: cyto3, nuclei, ") as e:
        bk._cellpose_model("nucleus")
    assert "\n" not in str(e.value) and downloads == []


def test_cellpose_unreadable_weights_file_is_one_line_error(tiny_cellpose_weights,
                                                            cellpose_offline, tmp_path):
    import tibspace.segment.backends as bk

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"broken.pth': cellpose could not load it \(") as e:
        bk._cellpose_model(str(bad))
    assert "\n" not in str(e.value) and cellpose_offline[1] == []
