"""Object outlines as polygons (napari Shapes, GeoJSON later)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours, label

__all__ = ["mask_outline", "outline_polygons"]


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


def outline_polygons(labels: np.ndarray, tolerance: float = 0.5) -> list[np.ndarray]:
    """One outline polygon per object of a YX or ZYX label image (ZYX: z is the first column)."""
    stack = labels if labels.ndim == 3 else labels[None]
    polygons = []
    for z, plane in enumerate(stack):
        for i, where in enumerate(ndi.find_objects(plane), start=1):
            if where is None:
                continue
            outline = mask_outline(plane[where] == i, (where[0].start, where[1].start), tolerance)
            if outline is None:
                continue
            if labels.ndim == 3:
                outline = np.column_stack([np.full(len(outline), z, float), outline])
            polygons.append(outline)
    return polygons
