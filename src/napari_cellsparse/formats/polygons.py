"""Objects as polygons along pixel edges, and back: exact, holes kept.

A pixel ``(row, col)`` covers ``x in [col, col + 1]`` and ``y in [row, row + 1]`` (QuPath's
and GeoJSON's pixel frame). An object's boundary is traced along pixel edges, so its
polygon covers exactly its pixels, and :func:`rasterize` (a pixel belongs to a polygon when
its centre is inside) gives the same pixels back. Rings follow GeoJSON's rule in these
coordinates: the exterior counter-clockwise (positive shoelace area), holes clockwise.
Pixels count as connected through their sides (4-connectivity), so two parts that touch
only at a corner are two polygons. :func:`mask_outline` gives the same outline in napari's
frame (row, col; pixel centres at integers) for a Shapes layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Polygon",
    "mask_outline",
    "mask_polygons",
    "rasterize",
    "ring_area",
    "simplify_ring",
]

# One polygon: its exterior ring, then its holes; each ring N x 2 (x, y), not closed.
Polygon = list[np.ndarray]


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area: positive for an exterior ring, negative for a hole."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def mask_polygons(mask: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> list[Polygon]:
    """The polygons (exterior, then holes) of a boolean mask, in pixel-corner (x, y)
    coordinates shifted by ``offset`` = (x, y): one per 4-connected part.

    Marching squares (scikit-image's ``find_contours`` at 0.5 on the padded mask, which
    keeps objects 4-connected) puts every contour vertex at the middle of a pixel edge; a
    pixel corner lies wherever a contour passes from a vertical edge to a horizontal one,
    and those corners are the exact outline. Each ring belongs to the part of the pixel
    beside its first vertex on a vertical edge; per part, the ring enclosing the most is
    the exterior and the others are its holes.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    parts, _ = ndi.label(mask)
    padded = np.pad(parts, 1)
    shift = np.asarray(offset, dtype=np.float64)
    rings: dict[int, list[np.ndarray]] = {}
    for contour in find_contours(np.pad(mask, 1).astype(np.uint8), 0.5):
        x = contour[:-1, 1] - 0.5  # padded pixel-centre (row, col) -> corner frame (x, y)
        y = contour[:-1, 0] - 0.5
        vertical = np.abs(x - np.round(x)) < 1e-6  # vertex on an edge x = const
        after = np.roll(np.arange(len(x)), -1)
        turn = vertical != vertical[after]
        corners = np.stack(
            [np.where(vertical, x, x[after])[turn], np.where(vertical, y[after], y)[turn]], 1
        )
        first = int(np.argmax(vertical))
        row, col = int(np.floor(y[first])) + 1, round(float(x[first])) + 1  # in ``padded``
        owner = int(padded[row, col - 1] or padded[row, col])
        rings.setdefault(owner, []).append(np.round(corners))
    polygons: list[Polygon] = []
    for owner in sorted(rings):
        ordered = sorted(rings[owner], key=lambda r: -abs(ring_area(r)))
        exterior = ordered[0] if ring_area(ordered[0]) > 0 else ordered[0][::-1]
        holes = [r if ring_area(r) < 0 else r[::-1] for r in ordered[1:]]
        polygons.append([exterior + shift, *(h + shift for h in holes)])
    return polygons


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a ring (kept as it is where it would collapse)."""
    from skimage.measure import approximate_polygon

    if tolerance <= 0 or len(ring) <= 4:
        return ring
    closed = np.vstack([ring, ring[:1]])
    simple = approximate_polygon(closed, tolerance)[:-1]
    if len(simple) < 3 or abs(ring_area(simple)) < 1e-9:
        return ring
    return simple


def rasterize(
    polygons: Sequence[Polygon], shape: tuple[int, int], offset: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """The pixels (boolean, ``shape``) whose centres lie inside ``polygons`` (x, y rings,
    minus ``offset``); holes are cut out."""
    from skimage.draw import polygon as fill

    out = np.zeros(shape, dtype=bool)
    shift = np.asarray(offset, dtype=np.float64) + 0.5  # pixel centres at integer coordinates
    for rings in polygons:
        inside = np.zeros(shape, dtype=bool)
        for i, ring in enumerate(rings):
            ring = np.asarray(ring, dtype=np.float64) - shift
            if len(ring) < 3:
                continue
            rr, cc = fill(ring[:, 1], ring[:, 0], shape)
            inside[rr, cc] = i == 0
        out |= inside
    return out


def mask_outline(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.5
) -> np.ndarray | None:
    """The outer boundary of the largest part of ``mask`` as an ``N x 2`` (y, x) polygon in
    napari's frame, shifted by ``offset`` = (y, x); None for an empty mask.

    The exterior ring of :func:`mask_polygons` (on pixel edges), simplified by ``tolerance``
    where that keeps a polygon (a one-pixel part keeps its exact square).
    """
    polygons = mask_polygons(mask)
    if not polygons:
        return None
    largest = max(polygons, key=lambda rings: sum(ring_area(r) for r in rings))
    exterior = simplify_ring(largest[0], tolerance)
    return exterior[:, ::-1] - 0.5 + np.asarray(offset, dtype=float)
