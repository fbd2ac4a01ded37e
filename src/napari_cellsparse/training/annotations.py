"""The sparse-annotation convention, converted in exactly one place.

In a napari annotation Labels layer ``0`` means *not annotated* (ignored by every loss),
``1`` means *background* and ``2, 3, …`` are one id per annotated cell — the upload format of
cellsparse-api. The engine works on the internal form ``-1`` ignore / ``0`` background /
``> 0`` cells, which is also what upstream StarDist understands (negative labels are left out
of its losses).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import BadInputError

__all__ = [
    "IGNORE",
    "annotated_diameters",
    "check_annotation",
    "equivalent_diameters",
    "sparse_from_truth",
    "to_internal",
]

IGNORE = -1


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


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the disc with each object's area, for every object id > 0 (float64)."""
    ids = np.asarray(labels)
    counts = np.bincount(ids[ids > 0].ravel())
    areas = counts[counts > 0]
    return np.sqrt(4.0 * areas / np.pi)


def annotated_diameters(internal: np.ndarray) -> np.ndarray:
    """Equivalent diameters of the annotated cells of an internal-form annotation."""
    return equivalent_diameters(np.where(internal > 0, internal, 0))


def sparse_from_truth(
    image: np.ndarray, truth: np.ndarray, k: int | None = 4, band: int = 12
) -> np.ndarray:
    """A sparse annotation made from full ground truth, as in Sugawara 2023's protocol.

    Keeps the ``k`` darkest and ``k`` brightest cells (by mean intensity; all of them when
    ``k`` is None) and paints background in a band of ``band`` pixels around them; everything
    else is left unannotated. Returned in the layer convention (0 / 1 / 2+), uint16 — a
    stand-in for what a person would paint, for demos, tests and benchmarks.
    """
    from scipy import ndimage as ndi

    truth = np.asarray(truth)
    gray = np.asarray(image, np.float64)
    if gray.ndim == truth.ndim + 1:
        gray = gray.mean(axis=-1)
    ids = np.unique(truth[truth > 0])
    out = np.zeros(truth.shape, np.uint16)
    if k is None:
        out[truth == 0] = 1
        chosen = ids
    else:
        means = np.asarray(ndi.mean(gray, truth, ids))
        order = ids[np.argsort(means, kind="stable")]
        chosen = np.unique(np.concatenate([order[:k], order[-k:]])) if len(order) else order
        cells = np.isin(truth, chosen)
        near = ndi.binary_dilation(cells, iterations=band) if band > 0 else cells
        out[near & (truth == 0)] = 1
    for new_id, old in enumerate(chosen, start=2):
        out[truth == old] = new_id
    return out
