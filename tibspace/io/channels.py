"""Channel and marker name matching.

Names match case-insensitively and ignoring ``-``, ``_``, space, ``/`` and ``.``,
so ``NaK-ATPase`` equals ``nak_atpase``.
"""

from __future__ import annotations

import re

_NAME_STRIP = re.compile(r"[-_ /.]")


def normalise_name(name: str) -> str:
    """Lower-case ``name`` and drop ``- _ space / .`` (channel/marker matching).

    Examples
    --------
    >>> normalise_name("NaK-ATPase") == normalise_name("nak_atpase")
    True
    """
    return _NAME_STRIP.sub("", str(name)).lower()
