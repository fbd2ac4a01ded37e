"""The sparse-annotation convention, in one place: its values, its conversion, and writing
objects into an annotation without losing what is already there.

In a napari annotation Labels layer ``0`` means *not annotated* (ignored by every loss),
``1`` means *background* and ``2, 3, …`` are one id per annotated cell — the upload format of
cellsparse-api. The engine works on the internal form ``-1`` ignore / ``0`` background /
``> 0`` cells, which is also what upstream StarDist understands (negative labels are left out
of its losses). A new object takes the next free id and is painted only over unannotated or
background pixels: cells already annotated are never overwritten. A Labels layer holding an
annotation says so in its metadata under :data:`SPARSE_KEY` (GeoJSON files keep it too).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import BadInputError
from .masks import PromptMask

__all__ = [
    "FIRST_CELL_ID",
    "IGNORE",
    "SPARSE_KEY",
    "check_annotation",
    "count_cells",
    "next_free_id",
    "paint_masks",
    "to_internal",
    "writable",
]

FIRST_CELL_ID = 2
IGNORE = -1
SPARSE_KEY = "sparse_annotation"


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


def to_internal(annotation: np.ndarray) -> np.ndarray:
    """Layer convention (0 ignore / 1 background / 2+ cells) → int32 (-1 / 0 / 1+)."""
    data = np.asarray(annotation)
    if data.dtype == bool or not np.issubdtype(data.dtype, np.integer):
        raise BadInputError(
            f"Annotations must be an integer Labels layer, not {data.dtype} "
            "(0 = not annotated, 1 = background, 2, 3, ... = one id per cell)."
        )
    if data.size and data.min() < 0:
        raise BadInputError("Annotations must not contain negative values.")
    return data.astype(np.int32) - 1


def check_annotation(image_shape: tuple[int, ...], internal: np.ndarray, what: str) -> None:
    """Raise a clear error when an annotation cannot teach anything, or does not fit its image."""
    if tuple(internal.shape) != tuple(image_shape):
        raise BadInputError(
            f"{what}: the annotation has shape {tuple(internal.shape)} but the image has "
            f"{tuple(image_shape)}; they must cover the same pixels."
        )
    if not (internal > 0).any():
        raise BadInputError(
            f"{what}: no annotated cell. Paint at least one cell with a label of 2 or more "
            "(1 is background, 0 is not annotated)."
        )
    if not (internal == 0).any():
        raise BadInputError(
            f"{what}: no background. Paint some background around the cells with label 1, "
            "so the model learns what is not a cell."
        )


def count_cells(labels: Iterable[np.ndarray]) -> int:
    """Annotated cells (distinct ids > 0) over internal-form annotations."""
    return int(sum(len(np.unique(lab[lab > 0])) for lab in labels))
