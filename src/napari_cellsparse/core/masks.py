"""Objects as boolean masks: one predicted object in a window of the image (SAM prompts,
automask), and the point that stands for an object (where to annotate or click next).

:class:`PromptMask` is kept as a window, not a full image, so that thousands of small objects
on a large image cost their own size; :meth:`PromptMask.full` makes the full-size mask when
it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PromptMask", "point_inside"]


@dataclass
class PromptMask:
    """One predicted object: a boolean mask inside the window starting at ``(y0, x0)``."""

    mask: np.ndarray
    y0: int
    x0: int
    score: float
    shape: tuple[int, int]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def slices(self) -> tuple[slice, slice]:
        h, w = self.mask.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full(self) -> np.ndarray:
        """The mask as a full image-sized boolean array."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.slices] = self.mask
        return out

    def bbox(self) -> tuple[int, int, int, int] | None:
        """Tight ``(y0, x0, y1, x1)`` of the True pixels (end exclusive), or None if empty."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.mask.any(axis=0))
        return (
            self.y0 + int(rows[0]),
            self.x0 + int(cols[0]),
            self.y0 + int(rows[-1]) + 1,
            self.x0 + int(cols[-1]) + 1,
        )


def point_inside(piece: np.ndarray, cy: float, cx: float) -> tuple[float, float]:
    """(cy, cx) when it falls inside the boolean ``piece``, else the piece's nearest pixel:
    the point of an object whose centroid may lie outside it (a crescent, a ring)."""
    y, x = round(cy), round(cx)
    if 0 <= y < piece.shape[0] and 0 <= x < piece.shape[1] and piece[y, x]:
        return cy, cx
    ys, xs = np.nonzero(piece)
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(ys[nearest]), float(xs[nearest])
