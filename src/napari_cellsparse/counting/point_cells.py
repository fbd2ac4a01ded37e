"""The cells under a counter's given points, and touching cells pasted against them.

Points say where a cell is, not its shape. Where a given point lies on a piece of the image's
foreground (:func:`~napari_cellsparse.counting.centres.cell_foreground`, as the counter reads
it) of about one cell's size with no other given point on it, that piece is taken for the
cell's outline. Those
outlines make a :class:`~napari_cellsparse.models.touching.CellBank`, so counter training
can paste touching cells as sparse segmentation training does: the crops of sparse points
seldom show two given cells pressed together, and the counter then draws one peak for a
touching pair. The pasted cell's pixels become trusted, with a peak at its centre; no other
pixel changes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..models.touching import CellBank, paste_touching
from .centres import cell_foreground, pixel_indices
from .targets import heatmap_targets

__all__ = ["CellCrops", "point_cells"]

# A piece of foreground is one cell's outline when its area is within these multiples of a
# disc of the cell diameter (smaller: a fleck or a part; larger: touching cells).
CELL_AREA = (0.3, 2.0)


def point_cells(
    image: np.ndarray, points: np.ndarray, polarity: float, diameter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two label maps (int32, the image's Y x X; point ``j`` has id ``j + 1``): the outlines
    of the given cells whose foreground piece is one cell (``outlines``), and those plus a
    disc of ``diameter`` around every other given point (``known``, what a paste must not
    cover)."""
    shape = image.shape[:2]
    if not len(points):
        return np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    foreground = cell_foreground(image, polarity, diameter)
    pieces = ndi.label(foreground)[0] if foreground is not None else np.zeros(shape, np.int32)
    at = pixel_indices(points, shape)
    piece = pieces[at[:, 0], at[:, 1]]
    areas = np.bincount(pieces.ravel())
    given = np.bincount(piece, minlength=len(areas))
    disc = np.pi * diameter**2 / 4
    lookup = np.zeros(len(areas), np.int32)
    for j, p in enumerate(piece):
        if p > 0 and given[p] == 1 and CELL_AREA[0] * disc <= areas[p] <= CELL_AREA[1] * disc:
            lookup[p] = j + 1
    outlines = lookup[pieces]
    known = outlines.copy()
    radius = diameter / 2
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for j, (y, x) in enumerate(at):
        if lookup[piece[j]] != j + 1:
            r = int(np.ceil(radius))
            ys, xs = slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1)
            near = (yy[ys] - y) ** 2 + (xx[:, xs] - x) ** 2 <= radius**2
            known[ys, xs][near & (known[ys, xs] == 0)] = j + 1
    return outlines, known


class CellCrops:
    """Touching-cell pastes for a counter's training crops, from the cells of its points."""

    def __init__(self, images: list[np.ndarray], maps: list[tuple[np.ndarray, np.ndarray]]):
        self.known = [known for _, known in maps]
        self.bank = CellBank.of(images, [outlines for outlines, _ in maps])
        # per image, the indices of the points whose cell has an outline (is in the bank)
        self.outlined = [np.unique(outlines[outlines > 0]) - 1 for outlines, _ in maps]

    def paste(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        extra: np.ndarray,
        at: tuple[int, int],
        sigma: float,
    ) -> bool:
        """In place on a crop: ``image`` and ``extra`` (target, weight and the known map, the
        last two axes' planes 0-2). A bank cell pasted against the given cell at ``at`` (its
        point's pixel in the crop; the caller checks the cell has an outline), its pixels
        trusted, labelled in the known map, and its peak added to the target. True when one
        was pasted."""
        known = extra[..., 2].astype(np.int32)
        before = int(known.max())
        centre = paste_touching(rng, image, known, self.bank, at)
        if centre is None:
            return False
        footprint = known == before + 1
        extra[..., 0] += heatmap_targets(np.array([centre]), known.shape, sigma)
        extra[..., 1][footprint] = 1.0
        extra[..., 2] = known
        return True
