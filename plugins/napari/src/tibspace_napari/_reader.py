"""Open multiplex images in napari: one image layer per channel, named by marker.

The reader is a shell over :func:`tibspace.io.open_image` (OME-TIFF, named
multi-page TIFF, folder of single-channel TIFFs). Pixels stay on disk: layers
hold the lazy dask arrays of every pyramid level (multiscale when the file is
pyramidal), and contrast limits come from a percentile of a small window of
the coarsest level, so opening a slide reads only a few tiles.

Layers are placed in micrometres: ``scale=(pixel_size_um, pixel_size_um)``
and ``units=("um", "um")``, so result layers in µm (points, shapes) overlay
the pixels exactly and the scale bar reads µm. Without a pixel size in the
file, layers are in pixels until a run supplies one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tibspace.errors import InputError
from tibspace.io import MultiplexImage, normalise_channel_name, open_image

__all__ = ["napari_get_reader", "read_image", "open_for_layers", "image_layers", "marker_colormap",
           "contrast_limits", "METADATA_KEY", "UM"]

#: Key under which tibspace stores its information in ``layer.metadata``.
METADATA_KEY = "tibspace"
#: Layer units of every tibspace layer in µm (napari's scale bar then reads µm).
UM = ("um", "um")

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
_OPEN_IMAGES: dict[str, MultiplexImage] = {}

# Marker groups -> napari colormap (additive blending on black), in the order
# channels are made visible on opening (the analysis' key markers first). Names are
# compared after tibspace.io.normalise_channel_name (lower case, no - _ / . space).
_MARKER_GROUPS: list[tuple[str, str, tuple[str, ...]]] = [
    # Within a group, earlier names are preferred for the default-visible channel.
    ("nuclear", "blue", ("dapi", "hoechst", "hoechst33342", "hh3", "h3", "nuc", "nucleus",
                         "nuclei", "dna", "dna1", "dna2", "ir191", "ir193", "draq5", "sytox")),
    ("tumour", "green", ("heppar1", "hepatocyte", "panck", "pankrt", "pancytokeratin",
                         "cytokeratin", "ck", "ckepcam", "epcam", "gpc3", "ecad", "ecadherin",
                         "afp", "arg1", "ck7", "ck5", "ck8", "ck18", "ck19", "krt", "krt8",
                         "krt18", "krt19")),
    ("cd8", "magenta", ("cd8", "cd8a", "cd8b")),
    ("macrophage", "yellow", ("cd68", "cd163", "cd206", "cd14", "cd11b", "iba1")),
    ("spp1", "cyan", ("spp1", "osteopontin", "opn")),
    ("caf", "bop orange", ("asma", "sma", "acta2", "fap", "pdgfrb", "vim", "vimentin")),
    ("collagen", "gray", ("col1", "coli", "col1a1", "collagen", "collagen1", "collageni")),
    ("net", "bop purple", ("cith3", "h3cit", "citrullinatedh3", "mpo", "cd15", "cd66b",
                           "elane", "ne")),
    ("cd3", "red", ("cd3", "cd3e", "cd3d")),
]
_OTHER_COLORMAPS = ("bop blue", "red", "yellow", "cyan", "magenta", "green", "bop orange",
                    "bop purple", "gray")
# At most this many channels are visible on opening (a 40-plex additive blend
# is white noise); the rest are one click away in the layer list.
_MAX_VISIBLE = 6


def marker_colormap(name: str) -> tuple[str, Optional[str]]:
    """napari colormap name and marker group for a channel name.

    Parameters
    ----------
    name : str
        Channel name as in the image (matching ignores case, ``- _ / .`` and spaces).

    Returns
    -------
    colormap : str
        A napari colormap name (``"blue"`` for nuclear stains, ``"green"`` for
        tumour markers, ``"magenta"`` for CD8, ...), ``"gray"`` if unknown.
    group : str or None
        ``"nuclear"``, ``"tumour"``, ``"cd8"``, ... or None for other markers.

    Examples
    --------
    >>> marker_colormap("DAPI"), marker_colormap("HepPar-1"), marker_colormap("CD8a")
    (('blue', 'nuclear'), ('green', 'tumour'), ('magenta', 'cd8'))
    """
    key = normalise_channel_name(str(name))
    # Suffixes tibspace.io adds to repeated names ("HEM_2") do not change the marker.
    base = key.rstrip("0123456789") if key[-1:].isdigit() and "_" in str(name) else key
    for group, cmap, names in _MARKER_GROUPS:
        if key in names or base in names:
            return cmap, group
    return "gray", None


def contrast_limits(level: Any, channel: int, max_side: int = 1024,
                    percentiles: tuple[float, float] = (1.0, 99.5)) -> tuple[float, float]:
    """Contrast limits of one channel from a central window of a (coarse) level.

    Only a window of at most ``max_side`` x ``max_side`` pixels is read, so this
    is cheap even for a non-pyramidal slide.

    Parameters
    ----------
    level : array_like
        ``(C, Y, X)`` array (dask or numpy), normally the coarsest pyramid level.
    channel : int
        Channel index.
    max_side : int
        Largest window side in pixels.
    percentiles : (float, float)
        Low and high percentiles.

    Returns
    -------
    (float, float)
        ``(low, high)`` with ``high > low``.

    Examples
    --------
    >>> a = np.zeros((1, 10, 10)); a[0, 5:, :] = 100.0
    >>> contrast_limits(a, 0)
    (0.0, 100.0)
    """
    _, ny, nx = (int(s) for s in level.shape)
    hy, hx = min(ny, max_side), min(nx, max_side)
    y0, x0 = (ny - hy) // 2, (nx - hx) // 2
    win = np.asarray(level[channel, y0:y0 + hy, x0:x0 + hx], dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(win, percentiles))
    if hi <= lo:
        # Sparse ion-count channels: the high percentile can still be 0.
        hi = float(win.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def image_layers(img: MultiplexImage, *, pixel_size_known: bool = True,
                 extra_metadata: Optional[dict] = None) -> list[tuple]:
    """napari LayerDataTuples for a :class:`~tibspace.io.MultiplexImage`.

    One ``image`` layer per channel, named by marker, additive blending, a
    colormap per marker group, ``scale=(px, px)`` in µm, multiscale when the
    file is pyramidal. The data stay lazy (dask arrays).

    Parameters
    ----------
    img : tibspace.io.MultiplexImage
        An opened image.
    pixel_size_known : bool
        False when the file recorded no pixel size and ``img.pixel_size_um`` is
        a 1 µm placeholder: layers are then in pixel units and say so.
    extra_metadata : dict, optional
        Added to every layer's ``metadata["tibspace"]``.

    Returns
    -------
    list of (data, kwargs, "image")

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tibspace.io import write_ome_tiff
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_ome_tiff(d / "a.ome.tif", np.ones((2, 40, 50), np.uint8), ["DAPI", "CD8"], 0.5)
    >>> layers = image_layers(open_image(d / "a.ome.tif"))
    >>> [(kw["name"], kw["colormap"], kw["scale"]) for _, kw, _ in layers]
    [('DAPI', 'blue', (0.5, 0.5)), ('CD8', 'magenta', (0.5, 0.5))]
    """
    px = float(img.pixel_size_um)
    multiscale = len(img.levels) > 1
    coarse = img.levels[-1]
    groups = [marker_colormap(n) for n in img.channel_names]
    # Visible on opening: the first channel of each known group (nuclear and
    # tumour first), up to _MAX_VISIBLE; everything when the panel is small.
    visible = set(range(img.n_channels)) if img.n_channels <= _MAX_VISIBLE else set()
    if not visible:
        keys = [normalise_channel_name(n) for n in img.channel_names]
        for gname, _, names in _MARKER_GROUPS:
            members = [i for i, (_, g) in enumerate(groups) if g == gname]
            if members and len(visible) < _MAX_VISIBLE:
                # The group's preferred marker (earliest in its name list).
                rank = {n: r for r, n in enumerate(names)}
                visible.add(min(members, key=lambda i: (rank.get(keys[i], len(rank)), i)))
    # The layers' dask arrays read through the image's open file handles:
    # keep the image alive here (layer metadata must stay plain/copyable).
    _OPEN_IMAGES[str(img.path)] = img
    k_other = 0
    layers = []
    for i, name in enumerate(img.channel_names):
        cmap, group = groups[i]
        if group is None:
            cmap = _OTHER_COLORMAPS[k_other % len(_OTHER_COLORMAPS)]
            k_other += 1
        data: Any = [lvl[i] for lvl in img.levels] if multiscale else img.levels[0][i]
        meta = {"path": str(img.path), "channel": name, "channel_index": i,
                "pixel_size_um": px if pixel_size_known else None,
                "marker_group": group}
        if extra_metadata:
            meta.update(extra_metadata)
        kwargs = {
            "name": name,
            "colormap": cmap,
            "blending": "additive",
            "contrast_limits": contrast_limits(coarse, i),
            "scale": (px, px),
            "multiscale": multiscale,
            **({"units": UM} if pixel_size_known else {}),
            "visible": i in visible,
            "metadata": {METADATA_KEY: meta},
        }
        layers.append((data, kwargs, "image"))
    return layers


def open_for_layers(path: str | Path,
                    pixel_size_um: Optional[float] = None) -> tuple[MultiplexImage, bool]:
    """Open ``path`` with :func:`tibspace.io.open_image`, in pixel units if it records no pixel size.

    Returns
    -------
    img : tibspace.io.MultiplexImage
        The opened image (``pixel_size_um`` is a 1 µm placeholder when unknown).
    pixel_size_known : bool
        False when neither the file nor ``pixel_size_um`` gave a pixel size
        (a warning says so; set the pixel size in the tibspace widget before running).

    Raises
    ------
    tibspace.errors.InputError
        Unreadable or unsupported file (one-line message naming the file).
    """
    path = Path(path)
    try:
        return open_image(path, pixel_size_um=pixel_size_um), True
    except InputError as exc:
        if pixel_size_um is not None:
            raise
        # If a placeholder pixel size makes the file open, the only problem
        # was the missing pixel size: show the image in pixel units.
        try:
            img = open_image(path, pixel_size_um=1.0)
        except InputError:
            raise exc from None
    warnings.warn(f"{path.name}: no pixel size in the file; layers are in pixels. "
                  "Set the pixel size (µm) in the tibspace widget before running.",
                  stacklevel=3)
    return img, False


def read_image(path: str | Path, pixel_size_um: Optional[float] = None) -> list[tuple]:
    """Open ``path`` with :func:`tibspace.io.open_image` and return image layers.

    When the file records no pixel size (and none is given), the image is
    opened in pixel units (scale 1) with a warning (:func:`open_for_layers`).

    Raises
    ------
    tibspace.errors.InputError
        Unreadable or unsupported file (one-line message naming the file).
    """
    img, known = open_for_layers(path, pixel_size_um)
    return image_layers(img, pixel_size_known=known)


def _accepts(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        return any(q.suffix.lower() in _TIFF_SUFFIXES for q in p.iterdir() if q.is_file())
    return p.suffix.lower() in _TIFF_SUFFIXES and p.is_file()


def napari_get_reader(path: str | Sequence[str]) -> Optional[Callable[..., list]]:
    """npe2 reader hook: a reader function for TIFF files / folders, else None.

    Examples
    --------
    >>> napari_get_reader("notes.txt") is None
    True
    """
    path = single_path(path)
    if path is None or not _accepts(path):
        return None
    return _reader_function


def single_path(path: str | Sequence[str]) -> Optional[str]:
    """The one path napari hands a reader (a list of one), or None for several."""
    if isinstance(path, (list, tuple)):
        return path[0] if len(path) == 1 else None
    return path


def _reader_function(path: str | Sequence[str]) -> list[tuple]:
    return read_image(single_path(path))
