"""The dock's analysis settings: exposed parameters, panel overrides, status line.

:data:`PARAMETERS` are the panel ``[parameters]`` the dock shows (µm);
:func:`load_panel_with_overrides` applies the dock's choices (parameters,
nuclear / membrane channel, manual gates, pixel size) to a loaded panel
without changing its file; :func:`image_status` is the status line for an
open image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from tibspace.errors import InputError

__all__ = ["PARAMETERS", "load_panel_with_overrides", "image_status", "NO_IMAGE_TEXT"]

#: Parameters exposed in the dock: (panel key, label, default µm, maximum).
PARAMETERS = (
    ("cell_expansion_um", "Cell expansion (µm)", 3.0, 50.0),
    ("margin_um", "Margin half-width (µm)", 50.0, 1000.0),
    ("barrier_width_um", "Barrier width (µm)", 50.0, 1000.0),
    ("segment_um", "Segment length (µm)", 50.0, 5000.0),
)


def load_panel_with_overrides(panel_path: str | Path, *, parameters: Optional[dict] = None,
                              nuclear: Optional[str] = None, membrane: Optional[str] = None,
                              gates: Optional[dict] = None, pixel_size_um: Optional[float] = None):
    """Load a panel and apply the dock's settings (the panel file is not changed).

    Parameters
    ----------
    panel_path : path
        Panel TOML.
    parameters : dict, optional
        ``{name: value}`` merged over the panel's ``[parameters]``.
    nuclear, membrane : str, optional
        A channel to use as the nuclear / membrane channel instead of the panel's.
    gates : dict, optional
        ``{marker: value}`` manual gates replacing the panel's.
    pixel_size_um : float, optional
        Used when the image records no pixel size.

    Returns
    -------
    tibspace.panel.Panel

    Raises
    ------
    tibspace.errors.PanelError
        Malformed panel, or a gate for a marker the panel does not have.
    """
    from tibspace.errors import PanelError
    from tibspace.cells import load_panel

    panel = load_panel(panel_path)
    changes: dict[str, Any] = {}
    if parameters:
        changes["parameters"] = {**dict(panel.parameters), **parameters}
    if nuclear:
        changes["nuclear"] = [nuclear]
    if membrane:
        changes["membrane"] = [membrane]
    if gates:
        markers = dict(panel.markers)
        for m, v in gates.items():
            if m not in markers:
                raise PanelError(f"{panel_path}: gate given for marker {m!r} which the panel's "
                                 f"[markers] lacks; it has: {', '.join(markers)}")
            spec = markers[m]
            markers[m] = (dataclasses.replace(spec, gate=float(v)) if dataclasses.is_dataclass(spec)
                          else {**dict(spec), "gate": float(v)})
        changes["markers"] = markers
    if pixel_size_um:
        changes["pixel_size_um"] = float(pixel_size_um)
    if not changes:
        return panel
    if dataclasses.is_dataclass(panel):
        fields = {f.name for f in dataclasses.fields(panel)}
        unknown = set(changes) - fields
        if unknown:
            raise InputError(f"this tibspace Panel has no field(s) {sorted(unknown)}; "
                             "update tibspace-napari to match tibspace")
        return dataclasses.replace(panel, **changes)
    for k, v in changes.items():
        setattr(panel, k, v)
    return panel


NO_IMAGE_TEXT = "Open an image (File › Open, or File › Open Sample › tibspace)."


def image_status(meta: dict) -> str:
    """The dock's status line for an open image (its name, channels, pixel size, what to do next).

    Examples
    --------
    >>> image_status({"path": "/d/s.ome.tif", "channels": ["DAPI", "CD8"], "pixel_size_um": 0.5})
    's.ome.tif open: 2 channels, 0.5 µm/pixel. Check the panel and press Run analysis.'
    >>> image_status({"path": "/d/s.ome.tif", "channels": ["DAPI"], "pixel_size_um": None})
    's.ome.tif: no pixel size in the file; set it above before running.'
    """
    name = Path(meta["path"]).name
    px = meta.get("pixel_size_um")
    if px is None:
        return f"{name}: no pixel size in the file; set it above before running."
    n = len(meta.get("channels") or [])
    return f"{name} open: {n} channel{'s' if n != 1 else ''}, {px:g} µm/pixel. Check the panel and press Run analysis."
