"""Per-object tables as files: CSV or TSV written atomically, and read back by object id."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import BadInputError
from ..core.paths import atomic_target

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["table_measurements", "write_objects_csv", "write_table"]

SEPARATORS = {".tsv": "\t", ".txt": "\t", ".csv": ","}


def write_objects_csv(
    path: str | Path,
    labels: np.ndarray,
    scores: dict[int, float] | None = None,
    background_id: int | None = None,
) -> int:
    """One row per object of ``labels`` (id, centroid y/x, area, bbox, score); returns rows.

    0 is never an object; ``background_id=1`` also skips label 1, for label images in the
    annotation convention (1 = painted background, cells from 2). Written atomically: an
    interrupted write never leaves a half table under ``path``.
    """
    from skimage.measure import regionprops

    scores = scores or {}
    rows = 0
    with atomic_target(path) as temp, open(temp, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "id",
                "centroid_y",
                "centroid_x",
                "area",
                "bbox_y0",
                "bbox_x0",
                "bbox_y1",
                "bbox_x1",
                "score",
            ]
        )
        ids = labels.astype(np.int32)
        if background_id is not None:
            ids = np.where(ids == background_id, 0, ids)
        for region in regionprops(ids):
            cy, cx = region.centroid
            y0, x0, y1, x1 = region.bbox
            score = scores.get(region.label)
            out.writerow(
                [
                    region.label,
                    f"{cy:.2f}",
                    f"{cx:.2f}",
                    int(region.area),
                    y0,
                    x0,
                    y1,
                    x1,
                    "" if score is None else f"{score:.4f}",
                ]
            )
            rows += 1
    return rows


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` as TSV (``.tsv``/``.txt``) or CSV (``.csv``), UTF-8, atomically.

    Missing values are written ``NaN``, as QuPath writes them.
    """
    path = Path(path)
    separator = SEPARATORS.get(path.suffix.lower())
    if separator is None:
        raise BadInputError(
            f"Save the table as .csv or .tsv (tab-separated), not '{path.suffix or path.name}'."
        )
    try:
        with atomic_target(path) as tmp:
            table.to_csv(tmp, sep=separator, index=False, na_rep="NaN", encoding="utf-8")
    except OSError as err:
        raise BadInputError(f"Could not write the table {path}: {err}") from err
    return path


def table_measurements(table: pd.DataFrame) -> dict[int, dict[str, float]]:
    """The numeric measurements of each row, by ``Object ID`` (NaN values left out).

    The form :func:`napari_cellsparse.formats.geojson.labels_to_features` takes as ``measurements``.
    """
    from pandas.api.types import is_numeric_dtype

    numeric = [c for c in table.columns if c != "Object ID" and is_numeric_dtype(table[c])]
    result: dict[int, dict[str, float]] = {}
    for object_id, values in zip(
        table["Object ID"].to_numpy(), table[numeric].to_numpy(dtype=np.float64), strict=True
    ):
        result[int(object_id)] = {
            name: float(v) for name, v in zip(numeric, values, strict=True) if np.isfinite(v)
        }
    return result
