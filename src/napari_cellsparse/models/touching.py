"""Touching-cell augmentation: copies of annotated cells pasted against annotated cells.

A person annotating a few cells picks them one by one, and the painted background runs
around each: the crops then hardly ever show two annotated cells pressed together, so the
networks never learn the border between touching cells and read clumps as one object. Here
a training crop centred on an annotated cell gets, now and then, a copy of another annotated
cell (its pixels and its mask, turned and flipped) placed against it in a random direction.
Both are known cells, so the border between them is known too. Only pixels under the pasted
cell change, into that cell: no unannotated pixel becomes background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CellBank", "paste_touching"]

# A pasted cell's centre lies this share of the two cells' radii apart from the centre of the
# cell it touches: slightly under 1, so they press against each other as touching nuclei do.
SPACING = (0.8, 1.0)
TRIES = 4


@dataclass(frozen=True)
class CellBank:
    """The annotated cells of a dataset, each cut out with its mask, image borders excluded."""

    pixels: tuple[np.ndarray, ...]  # (h, w, C) float32
    masks: tuple[np.ndarray, ...]  # (h, w) bool

    @classmethod
    def of(cls, images: list[np.ndarray], labels: list[np.ndarray]) -> CellBank:
        """Every annotated cell of ``images`` not cut by the image's edge."""
        pixels, masks = [], []
        for image, lab in zip(images, labels, strict=True):
            cells = np.where(lab > 0, lab, 0)
            for cell, box in enumerate(ndi.find_objects(cells), start=1):
                if box is None or _at_edge(box, lab.shape):
                    continue
                mask = cells[box] == cell
                if mask.sum() >= 9:
                    pixels.append(np.array(image[box], np.float32))
                    masks.append(mask)
        return cls(tuple(pixels), tuple(masks))

    def __len__(self) -> int:
        return len(self.masks)


def _at_edge(box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    return any(s.start == 0 or s.stop == n for s, n in zip(box, shape, strict=False))


def paste_touching(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    bank: CellBank,
    at: tuple[int, int] | None = None,
) -> tuple[float, float] | None:
    """In place: a cell of ``bank`` pasted against the cell at ``at`` (default: the crop's
    centre), its pixels labelled with a new id (the largest plus one).

    It must land on the crop without covering any annotated cell but that one; up to
    ``TRIES`` directions are tried. Returns the pasted cell's centre (y, x) in the crop, or
    None when none was pasted.
    """
    size = labels.shape[0]
    y, x = (size // 2, size // 2) if at is None else at
    centre_id = int(labels[y, x]) if 0 <= y < size and 0 <= x < labels.shape[1] else 0
    if centre_id <= 0 or not len(bank):
        return None
    target = labels == centre_id
    ty, tx = (float(v) for v in np.argwhere(target).mean(0))
    t_radius = np.sqrt(target.sum() / np.pi)
    k = int(rng.integers(len(bank)))
    pixels, mask = _turned(rng, bank.pixels[k], bank.masks[k])
    my, mx = (float(v) for v in np.argwhere(mask).mean(0))
    m_radius = np.sqrt(mask.sum() / np.pi)
    for _ in range(TRIES):
        angle = rng.uniform(0.0, 2.0 * np.pi)
        distance = (t_radius + m_radius) * rng.uniform(*SPACING)
        y0 = round(ty + distance * np.sin(angle) - my)
        x0 = round(tx + distance * np.cos(angle) - mx)
        placed = _placed(mask, y0, x0, size)
        if placed is None:
            continue
        dst, src = placed
        footprint = mask[src]
        under = labels[dst][footprint]
        if np.any((under > 0) & (under != centre_id)):
            continue
        image[dst][footprint] = pixels[src][footprint]
        labels[dst][footprint] = int(labels.max()) + 1
        return y0 + my, x0 + mx
    return None


def _turned(
    rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    pixels, mask = np.rot90(pixels, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    return pixels, mask


def _placed(
    mask: np.ndarray, y0: int, x0: int, size: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Crop and cell slices of a cell placed at (y0, x0); None when under half of it lands."""
    h, w = mask.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, size), min(x0 + w, size)
    if ye <= ys or xe <= xs:
        return None
    src = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
    if mask[src].sum() < 0.5 * mask.sum():
        return None
    return (slice(ys, ye), slice(xs, xe)), src
