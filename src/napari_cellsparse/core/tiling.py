"""Rectangles of an image: overlapping tiles (SAM) and blocks with a halo (block-wise models).

Two ways to cover an image that is too large to process at once:

* :func:`tile_grid`: tiles of one size that overlap their neighbours; SAM embeds one tile at a
  time and objects found twice are merged afterwards.
* :func:`block_grid`: blocks whose *cores* tile the image without overlap, each read with a
  *halo* of context around it. An object belongs to the block whose core holds its centre, so
  every object is kept exactly once and, when the halo is wider than the largest object, whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadInputError

__all__ = ["Block", "Region", "block_grid", "tile_grid"]


@dataclass(frozen=True)
class Region:
    """A rectangle of the image, ``y0:y1, x0:x1`` (end exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def holds(self, box: Sequence[float]) -> bool:
        """Whether the box ``x0, y0, x1, y1`` lies inside."""
        x0, y0, x1, y1 = box
        return self.x0 <= x0 and self.y0 <= y0 and x1 <= self.x1 and y1 <= self.y1

    def overlap(self, other: Region) -> Region | None:
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        y1, x1 = min(self.y1, other.y1), min(self.x1, other.x1)
        return Region(y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(shape: tuple[int, int], tile: int = 1024, overlap: int = 128) -> list[Region]:
    """Tiles of ``tile`` pixels (fewer where the image is smaller) covering ``shape``,
    neighbours overlapping by at least ``overlap`` pixels, spread evenly, row by row."""
    if tile < 64:
        raise BadInputError(f"Tiles must be at least 64 pixels wide, got {tile}.")
    if not 0 <= overlap < tile // 2:
        raise BadInputError(
            f"The tile overlap must be at least 0 and less than half the tile "
            f"({tile // 2} pixels), got {overlap}."
        )
    h, w = shape
    return [
        Region(y, x, min(y + tile, h), min(x + tile, w))
        for y in _starts(h, tile, overlap)
        for x in _starts(w, tile, overlap)
    ]


@dataclass(frozen=True)
class Block:
    """A block: the ``core`` it owns and the ``outer`` region (core + halo) it reads."""

    core: Region
    outer: Region

    def owns(self, y: float, x: float) -> bool:
        """Whether the point ``(y, x)`` (image pixels) lies in the core (ends exclusive)."""
        c = self.core
        return c.y0 <= y < c.y1 and c.x0 <= x < c.x1


def block_grid(shape: tuple[int, int], block: int = 1024, halo: int = 64) -> list[Block]:
    """Blocks whose cores (``block`` pixels, the last ones shorter) tile ``shape`` without
    overlap, each with ``halo`` pixels of context on every side (clipped at the image
    edges), row by row."""
    if block < 32:
        raise BadInputError(f"Blocks must be at least 32 pixels wide, got {block}.")
    if halo < 0:
        raise BadInputError(f"The halo must be 0 or more pixels, got {halo}.")
    h, w = (int(n) for n in shape)
    blocks = []
    for y in range(0, h, block):
        for x in range(0, w, block):
            core = Region(y, x, min(y + block, h), min(x + block, w))
            outer = Region(
                max(0, y - halo), max(0, x - halo), min(h, core.y1 + halo), min(w, core.x1 + halo)
            )
            blocks.append(Block(core, outer))
    return blocks
