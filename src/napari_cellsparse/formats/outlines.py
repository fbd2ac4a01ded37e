"""Object outlines as polygons (napari Shapes, GeoJSON later)."""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours, label

__all__ = ["mask_outline"]


def mask_outline(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.5
) -> np.ndarray | None:
    """The outer boundary of the largest connected part of ``mask`` as an ``N x 2`` polygon.

    Vertices (y, x) lie on pixel edges (``find_contours`` at 0.5 on a padded mask), shifted
    by ``offset``. ``tolerance`` simplifies the polygon; where that would leave fewer than 3
    vertices (a one-pixel part) the exact boundary is kept. None only for an empty mask.
    """
    parts = label(np.pad(mask, 1), connectivity=1)
    if parts.max() == 0:
        return None
    largest = np.bincount(parts.ravel())[1:].argmax() + 1
    contour = max(find_contours((parts == largest).astype(np.uint8), 0.5), key=len)
    if contour.shape[0] > 1 and np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    if tolerance > 0:
        simple = approximate_polygon(np.vstack([contour, contour[:1]]), tolerance)[:-1]
        if len(simple) >= 3:
            contour = simple
    return contour - 1 + np.asarray(offset, dtype=float)
