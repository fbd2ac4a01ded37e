"""Objects as polygons along pixel edges, and back: exact, holes kept.

A pixel ``(row, col)`` covers ``x in [col, col + 1]`` and ``y in [row, row + 1]`` (QuPath's
and GeoJSON's pixel frame). An object's boundary is traced along pixel edges, so its
polygon covers exactly its pixels, and :func:`rasterize` (a pixel belongs to a polygon when
its centre is inside) gives the same pixels back. Rings follow GeoJSON's rule in these
coordinates: the exterior counter-clockwise (positive shoelace area), holes clockwise.
Pixels count as connected through their sides (4-connectivity), so two parts that touch
only at a corner are two polygons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Polygon", "mask_polygons", "rasterize", "ring_area", "simplify_ring"]

# One polygon: its exterior ring, then its holes; each ring N x 2 (x, y), not closed.
Polygon = list[np.ndarray]

# Edge directions (dx, dy) on the corner lattice, in the order right, down, left, up.
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area: positive for an exterior ring, negative for a hole."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start corners (x, y) and directions (index into ``_STEPS``) of every boundary edge,
    oriented so that the object is on the right when walking in image coordinates (y down)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    starts, dirs = [], []
    # (neighbour offset, start corner offset (dx, dy), direction) per side of a pixel
    sides = (
        ((-1, 0), (0, 0), 0),  # top side, walked to the right
        ((0, 1), (1, 0), 1),  # right side, walked down
        ((1, 0), (1, 1), 2),  # bottom side, walked to the left
        ((0, -1), (0, 1), 3),  # left side, walked up
    )
    h, w = mask.shape
    for (dr, dc), (ox, oy), direction in sides:
        neighbour = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        rows, cols = np.nonzero(inner & ~neighbour)
        starts.append(np.stack([cols + ox, rows + oy], axis=1))
        dirs.append(np.full(rows.size, direction))
    return np.concatenate(starts), np.concatenate(dirs)


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Every boundary ring of ``mask`` (corner coordinates, collinear vertices dropped)."""
    starts, dirs = _boundary_edges(mask)
    if starts.size == 0:
        return []
    width = mask.shape[1] + 2
    keys = starts[:, 1] * width + starts[:, 0]
    outgoing: dict[int, list[int]] = {}
    for index, key in enumerate(keys.tolist()):
        outgoing.setdefault(key, []).append(index)
    used = np.zeros(len(starts), dtype=bool)
    rings = []
    for first in range(len(starts)):
        if used[first]:
            continue
        vertices = []
        edge = first
        while True:
            used[edge] = True
            direction = int(dirs[edge])
            x, y = starts[edge] + _STEPS[direction]
            options = outgoing[int(y * width + x)]
            following = options[0]
            if len(options) > 1:
                # Two parts meet at this corner: turn right (towards this part), so parts
                # touching only at a corner are separate rings.
                right = (direction + 1) % 4
                following = next(e for e in options if int(dirs[e]) == right)
            if int(dirs[following]) != direction:
                vertices.append((x, y))
            if following == first:
                break
            edge = following
        rings.append(np.asarray(vertices, dtype=np.float64))
    return rings


def mask_polygons(mask: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> list[Polygon]:
    """The polygons (exterior, then holes) of a boolean mask, in pixel-corner (x, y)
    coordinates shifted by ``offset`` = (x, y): one per 4-connected part."""
    parts, _ = ndi.label(mask)
    polygons: list[Polygon] = []
    shift = np.asarray(offset, dtype=np.float64)
    for index, window in enumerate(ndi.find_objects(parts), start=1):
        if window is None:
            continue
        part = parts[window] == index
        origin = np.array([window[1].start, window[0].start], dtype=np.float64) + shift
        rings = [ring + origin for ring in _rings(part)]
        exterior = [r for r in rings if ring_area(r) > 0]
        holes = [r for r in rings if ring_area(r) < 0]
        # One 4-connected part has exactly one exterior ring.
        polygons.append([exterior[0], *holes])
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
