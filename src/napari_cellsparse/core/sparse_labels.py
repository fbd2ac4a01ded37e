"""Writing objects into a sparse annotation without losing what is already there.

Convention (shared with cellsparse-api): ``0`` = not annotated, ``1`` = background,
``2, 3, ...`` = one id per cell. A new object takes the next free id and is painted only
over unannotated or background pixels: cells already annotated are never overwritten.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .masks import PromptMask
from .paths import atomic_target

__all__ = ["FIRST_CELL_ID", "next_free_id", "paint_masks", "writable", "write_objects_csv"]

FIRST_CELL_ID = 2


def next_free_id(labels: np.ndarray) -> int:
    """The id a new cell gets: one above the largest, and never below 2."""
    top = int(labels.max()) if labels.size else 0
    return max(top + 1, FIRST_CELL_ID)


def writable(region: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` a new object may take in ``region``: unannotated or background."""
    return mask & (region < FIRST_CELL_ID)


def paint_masks(
    labels: np.ndarray, masks: Iterable[PromptMask], start_id: int | None = None
) -> list[int | None]:
    """Paint ``masks`` into ``labels`` in place with consecutive new ids.

    Returns one entry per mask: its new id, or None when nothing of it could be written (an
    empty mask, or one lying entirely on existing cells, which always stay).
    """
    next_id = next_free_id(labels) if start_id is None else start_id
    ids = []
    for item in masks:
        region = labels[item.slices]
        write = writable(region, item.mask)
        if not write.any():
            ids.append(None)
            continue
        region[write] = next_id
        ids.append(next_id)
        next_id += 1
    return ids


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
