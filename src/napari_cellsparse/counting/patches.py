"""Training crops for a counter: image, heat-map target and trusted mask, cut and turned together.

Half the crops are centred on a given point (every point of every image equally likely, so
images whose cells were shrunk to the canonical scale are not under-sampled) and half on a
random trusted pixel (mostly painted background), so steps are spent where the loss can learn
something. D4 flips/rotations and brightness/contrast/noise come from the sparse-training
sampler, applied to the target and mask as one stack so they stay aligned with the pixels.
With ``cells`` (:class:`~napari_cellsparse.counting.point_cells.CellCrops`), a ``touching``
share of the point-centred crops first gets a touching cell pasted against its point's cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models.augment import augment_pair
from .centres import pixel_indices
from .point_cells import CellCrops

__all__ = ["CountingData"]


@dataclass
class CountingData:
    """Normalised YXC images with heat-map targets and loss weights (same Y x X): 1 where the
    target is known, a smaller weight where it is only probable, 0 where it is unknown."""

    images: list[np.ndarray]
    targets: list[np.ndarray]
    masks: list[np.ndarray]
    points: list[np.ndarray]
    cells: CellCrops | None = None
    touching: float = 0.0  # share of the point-centred crops given a touching cell
    sigma: float = 1.0  # of the targets' peaks (for the pasted cells' peaks)
    _trusted: list[np.ndarray] = field(default_factory=list, repr=False)
    _owners: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    def __post_init__(self) -> None:
        self._trusted = [np.flatnonzero(m > 0) for m in self.masks]
        self._owners = np.repeat(np.arange(len(self.points)), [len(p) for p in self.points])
        if not any(len(t) for t in self._trusted):
            raise ValueError("No trusted pixel to learn from.")

    def sample(
        self, rng: np.random.Generator, batch_size: int, patch: int, augment: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``batch_size`` crops: images (N, C, P, P), targets and weights (N, 1, P, P)."""
        channels = self.images[0].shape[-1]
        images = np.zeros((batch_size, channels, patch, patch), np.float32)
        targets = np.zeros((batch_size, 1, patch, patch), np.float32)
        masks = np.zeros((batch_size, 1, patch, patch), np.float32)
        weights = np.array([len(t) for t in self._trusted], np.float64)
        weights /= weights.sum()
        owners = self._owners
        for i in range(batch_size):
            point = None
            if len(owners) and rng.random() < 0.5:
                j = int(rng.integers(len(owners)))
                k = int(owners[j])
                index = j - int(np.searchsorted(owners, k))
                centre = np.round(self.points[k][index]).astype(int)
                if augment and self._pastes(rng, k, index):
                    point = pixel_indices(self.points[k][index], self.masks[k].shape)[0]
            else:
                k = int(rng.choice(len(self.images), p=weights))
                pool = self._trusted[k]
                centre = np.array(
                    np.unravel_index(int(pool[rng.integers(len(pool))]), self.masks[k].shape)
                )
            jitter = rng.integers(-patch // 4, patch // 4 + 1, size=2)
            cells = self.cells if point is not None else None
            planes = [self.targets[k], self.masks[k]]
            if cells is not None:
                planes.append(cells.known[k])
            img, extra, origin = _crop(self.images[k], planes, centre + jitter, patch)
            if cells is not None and point is not None:
                y, x = point - origin
                cells.paste(rng, img, extra, (int(y), int(x)), self.sigma)
                extra = extra[..., :2]
            if augment:
                img, extra = augment_pair(rng, img, extra)
            images[i] = np.moveaxis(img, -1, 0)
            targets[i, 0] = extra[..., 0]
            masks[i, 0] = extra[..., 1]
        return images, targets, masks

    def _pastes(self, rng: np.random.Generator, k: int, index: int) -> bool:
        """Whether this crop of point ``index`` of image ``k`` gets a touching cell: its cell
        has an outline and the draw says so (no draw when pasting is off)."""
        if self.cells is None or self.touching <= 0 or index not in self.cells.outlined[k]:
            return False
        return bool(rng.random() < self.touching)


def _crop(
    image: np.ndarray, planes: list[np.ndarray], centre: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``size`` window around ``centre``, kept inside the image where it fits; beyond the
    image the crop is zero (untrusted). Returns the image crop, the ``planes`` (Y x X maps)
    cropped and stacked on a last axis, and the window's origin (y, x) in the image."""
    h, w = planes[0].shape
    y0 = int(np.clip(centre[0] - size // 2, min(0, h - size), max(0, h - size)))
    x0 = int(np.clip(centre[1] - size // 2, min(0, w - size), max(0, w - size)))
    img = np.zeros((size, size, image.shape[-1]), np.float32)
    extra = np.zeros((size, size, len(planes)), np.float32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, h), min(x0 + size, w)
    dst = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
    img[dst] = image[sy0:sy1, sx0:sx1]
    for c, plane in enumerate(planes):
        extra[(*dst, c)] = plane[sy0:sy1, sx0:sx1]
    return img, extra, np.array([y0, x0])
