"""Channel and marker name matching.

Names match case-insensitively and ignoring ``-``, ``_``, space, ``/`` and ``.``,
so ``NaK-ATPase`` equals ``nak_atpase``. When no channel matches that way, a
channel whose name is the marker plus a vendor suffix matches too, provided
exactly one channel does (:func:`match_vendor_name`): a mass or dye in
brackets (Ionpath MIBI ``HH3 (89)``, Akoya ``CD8 (Opal 520)``, IMC
``HH3(In113)``), a fluorophore after a separator (``CD8_Cy5``, ``CD3-AF488``),
a zero-padded cycle number (``DAPI-01``, ``DAPI_R2``) or an isotope prefix
(``89Y_HH3``, ``Yb176_CD8``). Two or more such channels are an error listing
them, never a guess.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

from tibspace.errors import InputError

_NAME_STRIP = re.compile(r"[-_ /.]")

_DYE = (r"cy[2357](?:\.5)?|opal\s?\d{3}|af\s?\d{3}|alexa(?:\s?fluor)?\s?\d{3}|fitc|tritc|txred|texas\s?red"
        r"|dylight\s?\d{3}|atto\s?\d{3}|bv\d{3}|ef\d{3}|pe|apc")
_SUFFIXES = (
    re.compile(r"^(.+?)\s*[(\[][^()\[\]]*[)\]]$"),                      # HH3 (89), CD8 (Opal 520)
    re.compile(rf"^(.+?)[-_ ](?:{_DYE})$", re.IGNORECASE),             # CD8_Cy5, CD3-AF488
    re.compile(r"^(.+?)[-_ ](?:0\d{1,2}|r\d{1,2}|c(?:ycle)?\d{1,2})$", re.IGNORECASE),  # DAPI-01, DAPI_R2
    re.compile(r"^(?:\d{2,3}[A-Z][a-z]?|[A-Z][a-z]?\d{2,3}(?:Di)?)[-_ ](.+)$"),      # 89Y_HH3, Yb176_CD8
)


def normalise_name(name: str) -> str:
    """Lower-case ``name`` and drop ``- _ space / .`` (channel/marker matching).

    Examples
    --------
    >>> normalise_name("NaK-ATPase") == normalise_name("nak_atpase")
    True
    """
    return _NAME_STRIP.sub("", str(name)).lower()


def vendor_base_name(name: str) -> str:
    """``name`` without the vendor suffixes and isotope prefix listed in the module docstring.

    Examples
    --------
    >>> [vendor_base_name(n) for n in ["HH3 (89)", "CD8 (Opal 520)", "CD8_Cy5", "DAPI-01", "89Y_HH3", "Ki-67"]]
    ['HH3', 'CD8', 'CD8', 'DAPI', 'HH3', 'Ki-67']
    """
    base = str(name).strip()
    for _ in range(4):  # a name may carry several (e.g. "89Y_HH3 (89)")
        before = base
        for rx in _SUFFIXES:
            m = rx.match(base)
            if m and m.group(1).strip():
                base = m.group(1).strip()
        if base == before:
            break
    return base


def match_vendor_name(name: Any, channel_names: Sequence[str], where: Any = None) -> Optional[int]:
    """Index of the one channel whose vendor base name is ``name`` (normalised), else ``None``.

    Raises
    ------
    InputError
        Several channels match; the message lists them.

    Examples
    --------
    >>> match_vendor_name("HH3", ["dsDNA (175)", "HH3 (89)", "CD8 (158)"])
    1
    """
    key = normalise_name(name)
    hits = [i for i, c in enumerate(channel_names) if normalise_name(vendor_base_name(c)) == key]
    if len(hits) > 1:
        prefix = f"{where}: " if where is not None else ""
        raise InputError(f"{prefix}channel {str(name)!r} is ambiguous: it matches "
                         f"{', '.join(repr(channel_names[i]) for i in hits)} once their vendor suffixes "
                         "are dropped; name the channel exactly in the panel (or add it under "
                         "[channels.aliases])")
    return hits[0] if hits else None
