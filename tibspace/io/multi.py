"""Cell tables that hold several images: split them into one table per sample.

QuPath's *Export measurements* writes an ``Image`` column, inForm a
``Sample Name``, HALO an ``Image Location`` / ``Image File Name``; MCMICRO
writes one file per image already. A table whose image column has more than
one value is several samples, never one.
"""

from __future__ import annotations

from pathlib import PurePath

import pandas as pd

IMAGE_COLUMNS = ("Image", "Image Name", "Sample Name", "Image Location", "Image File Name", "image_id", "sample_id")


def image_column(df: pd.DataFrame) -> str | None:
    """The column naming each row's image (case-insensitive match), or None."""
    lower = {str(c).strip().lower(): c for c in df.columns}
    for name in IMAGE_COLUMNS:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def split_by_image(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{image name: rows}``; one entry named ``""`` when the table holds one image.

    Image names are reduced to the file's stem (HALO writes full paths).

    Examples
    --------
    >>> t = pd.DataFrame({"Image": ["a.tif", "b.tif", "a.tif"], "x": [1, 2, 3]})
    >>> {k: len(v) for k, v in split_by_image(t).items()}
    {'a': 2, 'b': 1}
    """
    col = image_column(df)
    if col is None or df[col].nunique(dropna=False) <= 1:
        return {"": df}
    names = df[col].astype(str).map(lambda s: PurePath(s.replace("\\\\", "/")).name.split(".")[0] or s)
    return {str(k): g.reset_index(drop=True) for k, g in df.groupby(names, sort=True)}
