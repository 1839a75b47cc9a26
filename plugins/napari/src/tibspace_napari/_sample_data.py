"""File › Open Sample › tibspace: the bundled synthetic HCC sample.

The sample (``sample_data/hcc_sample.ome.tif`` with its marker panel
``sample_data/hcc_sample_panel.toml``) ships with tibspace; it is made by
:mod:`tibspace.synthetic`. It is opened with the same reader as any slide.
"""

from __future__ import annotations

import os
from pathlib import Path

import tibspace
from tibspace.errors import InputError

from ._reader import read_image

__all__ = ["SAMPLE_IMAGE", "SAMPLE_PANEL", "sample_data_dir", "sample_paths", "make_sample_data"]

SAMPLE_IMAGE = "hcc_sample.ome.tif"
SAMPLE_PANEL = "hcc_sample_panel.toml"


#: Environment variable naming another folder holding the sample (checked first).
ENV_VAR = "TIBSPACE_SAMPLE_DATA"


def _candidates() -> list[Path]:
    pkg = Path(tibspace.__file__).resolve().parent
    # An explicit folder first, then installed package data, then the source
    # checkout (editable install).
    env = os.environ.get(ENV_VAR)
    return ([Path(env)] if env else []) + [pkg / "sample_data", pkg.parent / "sample_data"]


def sample_data_dir() -> Path:
    """The folder holding the tibspace sample image and panel.

    Raises
    ------
    tibspace.errors.InputError
        When no candidate folder holds the sample image.
    """
    for d in _candidates():
        if (d / SAMPLE_IMAGE).is_file():
            return d
    tried = ", ".join(str(d / SAMPLE_IMAGE) for d in _candidates())
    raise InputError(f"tibspace sample image not found (looked for {tried}); regenerate it "
                     "with `python -m tibspace.synthetic --out DIR --preset sample` and set "
                     f"{ENV_VAR}=DIR, or reinstall tibspace from a source checkout")


def sample_paths() -> tuple[Path, Path]:
    """``(image_path, panel_path)`` of the bundled sample.

    Examples
    --------
    >>> img, panel = sample_paths()  # doctest: +SKIP
    >>> img.name, panel.name  # doctest: +SKIP
    ('hcc_sample.ome.tif', 'hcc_sample_panel.toml')
    """
    d = sample_data_dir()
    panel = d / SAMPLE_PANEL
    if not panel.is_file():
        raise InputError(f"{panel}: the sample's marker panel is missing; reinstall tibspace "
                         "from a source checkout that includes sample_data/")
    return d / SAMPLE_IMAGE, panel


def make_sample_data() -> list[tuple]:
    """npe2 sample-data hook: image layers of the bundled HCC sample.

    Every layer's ``metadata["tibspace"]["panel"]`` is the sample's panel file,
    which the tibspace widget then uses by default.
    """
    image, panel = sample_paths()
    layers = read_image(image)
    for _, kwargs, _ in layers:
        kwargs["metadata"]["tibspace"]["panel"] = str(panel)
    return layers
