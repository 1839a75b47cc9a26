"""Channel names and pixel size (µm) from TIFF tags and OME-XML.

Channel names come from OME ``Channel@Name``, ImageJ ``Labels``, per-page
``PageName`` tags or per-page descriptions (MIBI JSON ``channel.target``,
PerkinElmer/Akoya XML ``<Biomarker>``/``<Name>``). An Ionpath MIBItiff page's
JSON ``channel.target`` (``HH3``) wins over its ``PageName`` (``HH3 (89)``,
target and mass). Pixel size comes from OME
``PhysicalSizeX/Y`` (any OME length unit), ImageJ's unit and resolution, or
the TIFF resolution tags (inch/cm); pixels must be square within 1 %.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import tifffile

from tibspace.errors import InputError, positive_um


# OME UnitsLength (and common spellings) -> micrometres.
LENGTH_UNITS_UM: dict[str, float] = {
    "ym": 1e-18, "zm": 1e-15, "am": 1e-12, "fm": 1e-9, "pm": 1e-6,
    "Å": 1e-4, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3,
    "nanometre": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3,
    "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "centimetre": 1e4, "dm": 1e5, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "dam": 1e7, "hm": 1e8, "km": 1e9, "thou": 25.4, "mil": 25.4,
    "in": 25400.0, "inch": 25400.0, "ft": 304800.0, "yd": 914400.0,
    "pt": 25400.0 / 72.0, "mi": 1.609344e9,
}


# Units that carry no physical size (OME "pixel", "reference frame").
_NON_PHYSICAL_UNITS = {"pixel", "pixels", "px", "reference frame", "referenceframe", ""}


# Resolution tags giving pixels larger than this are screen/print defaults
# (72/96/300 dpi), not a microscope's sampling; they are ignored.
_MAX_PLAUSIBLE_PIXEL_UM = 100.0


def _unit_to_um(unit: Optional[str]) -> Optional[float]:
    """Factor converting ``unit`` to µm; ``None`` for non-physical units.

    Raises ``KeyError`` for an unknown unit string.
    """
    if unit is None:
        return 1.0  # OME default unit is µm
    u = str(unit).strip()
    if u.lower() in _NON_PHYSICAL_UNITS:
        return None
    # Mojibake and escaped forms of the micro sign seen in real files.
    u = u.replace("Âµ", "µ").replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    if u in LENGTH_UNITS_UM:
        return LENGTH_UNITS_UM[u]
    if u.lower() in LENGTH_UNITS_UM:
        return LENGTH_UNITS_UM[u.lower()]
    raise KeyError(u)


def check_pixel_size_um(value: Any, where: Any = None) -> float:
    """``value`` as a positive, finite float of µm per pixel, or a one-line InputError.

    Examples
    --------
    >>> check_pixel_size_um("0.5")
    0.5
    """
    return positive_um(value, "pixel_size_um", where=where, unit="µm per pixel")


def _resolve_pixel_size(path: Path, file_px: Optional[float],
                        given: Optional[float]) -> float:
    if given is not None:
        given = check_pixel_size_um(given, path)
        if file_px is not None and abs(file_px - given) > 0.01 * file_px:
            warnings.warn(f"{path}: pixel size {given} µm given overrides {file_px:.6g} µm "
                          "recorded in the file", stacklevel=3)
        return given
    if file_px is None:
        raise InputError(f"{path}: no pixel size in the file's metadata; pass "
                         "--pixel-size-um (µm per pixel) or set [image] pixel_size_um in "
                         "the panel")
    return file_px


def _make_unique(names: Sequence[str], path: Path) -> list[str]:
    """Suffix repeated channel names with ``_2``, ``_3``... (with a warning)."""
    seen: dict[str, int] = {}
    out: list[str] = []
    taken = set(names)
    for n in names:
        if n not in seen:
            seen[n] = 1
            out.append(n)
            continue
        k = seen[n] + 1
        while f"{n}_{k}" in taken:
            k += 1
        seen[n] = k
        new = f"{n}_{k}"
        taken.add(new)
        warnings.warn(f"{path}: channel name {n!r} occurs more than once; the repeat is "
                      f"called {new!r}", stacklevel=3)
        out.append(new)
    return out


def _channel_names_from_file(path: Path, tf: tifffile.TiffFile, series: Any, c: int,
                             warn_unnamed: bool = True) -> list[str]:
    names: Optional[list[str]] = None
    if tf.is_ome and tf.ome_metadata:
        names = _ome_channel_names(tf.ome_metadata, c)
    if names is None and tf.is_imagej and tf.imagej_metadata:
        labels = tf.imagej_metadata.get("Labels")
        if isinstance(labels, (list, tuple)) and len(labels) >= c and all(labels[:c]):
            names = [str(x).strip() for x in labels[:c]]
    if names is None and c > 1:
        names = _page_names(tf, series, c)
    if names is None and c == 1 and series.keyframe is not None:
        # single page: a PageName, else the file name's stem
        page_name = _tag_value(series.keyframe, "PageName")
        names = [page_name] if page_name else [_stem(path)]
    if names is None:
        if warn_unnamed:
            warnings.warn(f"{path}: no channel names in the file; using channel_0.."
                          f"channel_{c - 1} (pass channel_names to name them)", stacklevel=5)
        names = [f"channel_{i}" for i in range(c)]
    return names


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".ome.btf", ".tiff", ".tif", ".btf"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _tag_value(page: Any, tag: str) -> Optional[str]:
    try:
        t = page.tags.get(tag)
    except Exception:
        return None
    if t is None:
        return None
    v = t.value
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    v = str(v).strip().strip("\x00")
    return v or None


def _page_names(tf: tifffile.TiffFile, series: Any, c: int) -> Optional[list[str]]:
    """Per-page channel names: PageName tag, MIBI JSON or PerkinElmer/Akoya XML."""
    pages = []
    for p in series.pages:
        if p is None:
            return None
        if not isinstance(p, tifffile.TiffPage):
            try:
                p = tf.pages[p.index]  # TiffFrame -> full page with tags
                if not isinstance(p, tifffile.TiffPage):
                    return None
            except Exception:
                return None
        pages.append(p)
        if len(pages) == c:
            break
    if len(pages) != c:
        return None
    names: list[str] = []
    for p in pages:
        desc = _tag_value(p, "ImageDescription")
        # Ionpath MIBItiff: PageName is "HH3 (89)" (target and mass); the JSON
        # description's "channel.target" is the marker itself
        n = _json_target(desc) or _tag_value(p, "PageName") or _description_name(desc)
        if not n:
            return None
        names.append(n)
    return names


def _json_target(desc: Optional[str]) -> Optional[str]:
    """``channel.target`` of a per-page JSON description (Ionpath MIBItiff), else ``None``."""
    if not desc or not desc.lstrip().startswith("{"):
        return None
    try:
        meta = json.loads(desc)
    except ValueError:
        return None
    target = meta.get("channel.target") if isinstance(meta, dict) else None
    return (str(target).strip() or None) if target not in (None, "") else None


def _description_name(desc: Optional[str]) -> Optional[str]:
    if not desc:
        return None
    d = desc.strip()
    if d.startswith("{"):
        try:
            meta = json.loads(d)
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        for key in ("channel.target", "channel_name", "name", "channel.mass"):
            if meta.get(key):
                return str(meta[key])
        return None
    if d.startswith("<"):
        # Akoya/PerkinElmer: <Biomarker> is the marker, <Name> the dye/filter
        for tag in ("Biomarker", "Name"):
            m = re.search(rf"<{tag}>([^<]+)</{tag}>", d)
            if m and m.group(1).strip():
                return m.group(1).strip()
    return None


def _ome_root(xml: str) -> Optional[ET.Element]:
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None


def _ome_pixels(xml: str) -> Optional[ET.Element]:
    root = _ome_root(xml)
    if root is None:
        return None
    return root.find("{*}Image/{*}Pixels")


def _ome_channel_names(xml: str, c: int) -> Optional[list[str]]:
    pixels = _ome_pixels(xml)
    if pixels is None:
        return None
    chans = pixels.findall("{*}Channel")
    names = [ch.get("Name") for ch in chans]
    if len(names) == c and all(n not in (None, "") for n in names):
        return [str(n).strip() for n in names]
    return None


def _pixel_size_from_file(path: Path, tf: tifffile.TiffFile, series: Any) -> Optional[float]:
    if tf.is_ome and tf.ome_metadata:
        pixels = _ome_pixels(tf.ome_metadata)
        if pixels is not None and pixels.get("PhysicalSizeX") is not None:
            return _ome_pixel_size(path, pixels)
    page = series.keyframe
    if tf.is_imagej and tf.imagej_metadata is not None:
        px = _imagej_pixel_size(path, tf.imagej_metadata, page)
        if px is not None:
            return px
    return _resolution_pixel_size(path, page)


def _ome_pixel_size(path: Path, pixels: ET.Element) -> Optional[float]:
    vals = []
    for ax in ("X", "Y"):
        raw = pixels.get(f"PhysicalSize{ax}")
        if raw is None:
            vals.append(None)
            continue
        unit = pixels.get(f"PhysicalSize{ax}Unit")
        try:
            factor = _unit_to_um(unit)
        except KeyError:
            raise InputError(f"{path}: unknown PhysicalSize{ax}Unit {unit!r} in the OME "
                             "metadata; pass --pixel-size-um") from None
        if factor is None:
            vals.append(None)
            continue
        try:
            v = float(raw) * factor
        except ValueError:
            raise InputError(f"{path}: PhysicalSize{ax}={raw!r} in the OME metadata is not a "
                             "number; pass --pixel-size-um") from None
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{path}: PhysicalSize{ax}={raw!r} in the OME metadata is not a "
                             "positive size; pass --pixel-size-um")
        vals.append(v)
    return _square(path, vals[0], vals[1])


def _square(path: Path, px: Optional[float], py: Optional[float]) -> Optional[float]:
    if px is None and py is None:
        return None
    if px is None or py is None:
        return px if px is not None else py
    if abs(px - py) > 0.01 * max(px, py):
        raise InputError(f"{path}: pixels are not square ({px:.6g} x {py:.6g} µm); tibspace "
                         "needs square pixels — resample the image to equal X/Y pixel size")
    return px


def _resolution(page: Any) -> tuple[Optional[float], Optional[float]]:
    """Pixels per unit along X and Y from the resolution tags."""
    out = []
    for tag in ("XResolution", "YResolution"):
        t = page.tags.get(tag)
        if t is None:
            out.append(None)
            continue
        v = t.value
        try:
            r = v[0] / v[1] if isinstance(v, tuple) else float(v)
        except (ZeroDivisionError, TypeError, IndexError):
            r = None
        out.append(r if r and math.isfinite(r) and r > 0 else None)
    return out[0], out[1]


def _imagej_pixel_size(path: Path, meta: dict, page: Any) -> Optional[float]:
    unit = meta.get("unit")
    if unit is None:
        return None
    try:
        factor = _unit_to_um(str(unit))
    except KeyError:
        warnings.warn(f"{path}: unknown ImageJ unit {unit!r}; ignoring the pixel size",
                      stacklevel=5)
        return None
    if factor is None:
        return None
    rx, ry = _resolution(page)
    px = factor / rx if rx else None
    py = factor / ry if ry else None
    return _square(path, px, py)


def _resolution_pixel_size(path: Path, page: Any) -> Optional[float]:
    t = page.tags.get("ResolutionUnit")
    if t is None:
        return None
    unit = int(t.value)
    factor = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if factor is None:
        return None
    rx, ry = _resolution(page)
    px = factor / rx if rx else None
    py = factor / ry if ry else None
    val = _square(path, px, py)
    if val is not None and val > _MAX_PLAUSIBLE_PIXEL_UM:
        # 72/96/300 dpi defaults written by generic software, not a microscope
        return None
    return val


def _check_ome_against_ifds(path: Path, tf: tifffile.TiffFile, series: Any,
                            pages: Sequence[Any]) -> None:
    """Refuse OME-XML that declares planes, sizes or a pixel type the IFDs do not hold.

    tifffile fills planes missing from the file with zeros; a panel naming such a
    channel would then be analysed as an empty stain.
    """
    if not (tf.is_ome and tf.ome_metadata):
        return
    pixels = _ome_pixels(tf.ome_metadata)
    if pixels is None:
        return
    try:
        declared = [int(pixels.get(k, "1")) for k in ("SizeC", "SizeZ", "SizeT")]
        sx, sy = int(pixels.get("SizeX", "0")), int(pixels.get("SizeY", "0"))
    except ValueError:
        raise InputError(f"{path}: the OME-XML sizes are not integers; re-export it") from None
    n_decl = int(np.prod(declared))
    spp = int(getattr(pages[0], "samplesperpixel", 1) or 1) if pages else 1
    n_have = len(pages) * spp
    if n_have < n_decl:
        raise InputError(f"{path}: the OME metadata declares {n_decl} planes (SizeC={declared[0]}, "
                         f"SizeZ={declared[1]}, SizeT={declared[2]}) but the file holds "
                         f"{n_have} image planes; re-export it")
    for page in pages:
        key = getattr(page, "keyframe", None) or page
        ny, nx = int(key.imagelength), int(key.imagewidth)
        if sx and sy and (nx, ny) != (sx, sy):
            raise InputError(f"{path}: the OME metadata declares {sx}×{sy} px planes but an IFD "
                             f"holds {nx}×{ny} px; re-export it")
    otype = pixels.get("Type")
    if otype and pages:
        try:
            want = np.dtype({"float": "float32", "double": "float64", "bit": "bool"}.get(otype, otype))
        except TypeError:
            return
        have = np.dtype((getattr(pages[0], "keyframe", None) or pages[0]).dtype)
        if want != have and not (want == np.bool_ and have.kind in "ub"):
            raise InputError(f"{path}: the OME metadata declares pixel type {otype} but the "
                             f"IFDs hold {have.name}; re-export it")
