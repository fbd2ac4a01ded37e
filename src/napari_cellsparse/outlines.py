"""Object outlines as polygons (napari Shapes, GeoJSON later)."""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours

__all__ = ["mask_outline"]


def mask_outline(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.5
) -> np.ndarray | None:
    """The outer boundary of the largest part of ``mask`` as an ``N x 2`` (y, x) polygon.

    Coordinates follow pixel edges' midpoints (``find_contours`` at 0.5 on a padded mask),
    shifted by ``offset``; ``tolerance`` simplifies (0 keeps every vertex). None if empty.
    """
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    longest = max(contours, key=len)
    if tolerance > 0:
        longest = approximate_polygon(longest, tolerance)
    if len(longest) > 1 and np.allclose(longest[0], longest[-1]):
        longest = longest[:-1]
    if len(longest) < 3:
        return None
    return longest - 1 + np.asarray(offset, dtype=float)
