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


def test_cellpose_without_extra_says_how_to_install():
    try:
        import cellpose  # noqa: F401
        pytest.skip("cellpose installed: the missing-extra path is not reachable")
    except ImportError:
        pass
    with pytest.raises(InputError, match=r"tibspace\[cellpose\]"):
        get_backend("cellpose")(np.zeros((4, 4)), None, 0.5, {})
