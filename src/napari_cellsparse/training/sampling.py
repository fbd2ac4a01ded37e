"""Training crops taken where the annotation is, with augmentation that keeps the ignore mask.

A :class:`SparseDataset` holds image/annotation pairs already normalised and rescaled to the
model's training scale (internal labels: -1 ignore, 0 background, >0 cells). Every crop is
centred on an annotated pixel (half of them on a cell), so steps are not wasted on
unannotated areas; flips, 90° rotations, a mild zoom and intensity changes are applied to the
image and the labels together, so the ignore mask stays aligned with the pixels it describes.
Crops on a cell may get a copy of another annotated cell pasted against it
(:mod:`~napari_cellsparse.models.touching`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.sparse_labels import IGNORE
from ..models.augment import augment_pair
from ..models.touching import CellBank, paste_touching

__all__ = ["Batch", "SparseDataset", "erase_cells", "zoom_pair"]


@dataclass
class Batch:
    """Augmented crops: ``images`` (N, P, P, C) float32, ``labels`` (N, P, P) int32 internal."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class SparseDataset:
    """Image/annotation pairs at training scale, all with the same number of channels."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    zoom_range: tuple[float, float] = (0.8, 1.25)
    touching: float = 0.0  # share of cell-centred crops given a touching neighbour
    _cells: CellBank = field(default_factory=lambda: CellBank((), ()), repr=False)
    _cell_pixels: list[np.ndarray] = field(default_factory=list, repr=False)
    _annotated_pixels: list[np.ndarray] = field(default_factory=list, repr=False)
    # replace() and sample_batch() may run in different threads (batches are prefetched).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels) or not self.images:
            raise ValueError("A dataset needs the same, non-zero number of images and labels.")
        for image, labels in zip(self.images, self.labels, strict=True):
            if image.ndim != 3 or image.shape[:2] != labels.shape:
                raise ValueError(f"Pair shapes differ: {image.shape} vs {labels.shape}.")
        self._cell_pixels = [np.flatnonzero(lab > 0) for lab in self.labels]
        self._annotated_pixels = [np.flatnonzero(lab != IGNORE) for lab in self.labels]
        if self.touching > 0:
            self._cells = CellBank.of(self.images, self.labels)

    def replace(self, other: SparseDataset) -> None:
        """Sample from ``other``'s pairs from now on (the annotation changed while training;
        a backend's running step loop holds this object)."""
        with self._lock:
            self.images, self.labels = other.images, other.labels
            self._cell_pixels = other._cell_pixels
            self._annotated_pixels = other._annotated_pixels
            self._cells = other._cells

    @property
    def n_channels(self) -> int:
        return int(self.images[0].shape[-1])

    @property
    def n_annotated(self) -> int:
        return int(sum(len(p) for p in self._annotated_pixels))

    def sample_batch(
        self, rng: np.random.Generator, batch_size: int, patch: int, augment: bool = True
    ) -> Batch:
        """``batch_size`` crops of ``patch`` x ``patch`` pixels centred on annotated pixels."""
        with self._lock:
            return self._sample(rng, batch_size, patch, augment)

    def _sample(
        self, rng: np.random.Generator, batch_size: int, patch: int, augment: bool
    ) -> Batch:
        images = np.empty((batch_size, patch, patch, self.n_channels), np.float32)
        labels = np.empty((batch_size, patch, patch), np.int32)
        weights = np.array([len(p) for p in self._annotated_pixels], np.float64)
        weights /= weights.sum()
        for i in range(batch_size):
            k = int(rng.choice(len(self.images), p=weights))
            on_cell = rng.random() < 0.5 and len(self._cell_pixels[k]) > 0
            pool = self._cell_pixels[k] if on_cell else self._annotated_pixels[k]
            centre = np.unravel_index(int(pool[rng.integers(len(pool))]), self.labels[k].shape)
            zoom = np.exp(rng.uniform(*np.log(self.zoom_range))) if augment else 1.0
            size = max(8, round(patch / zoom))
            img, lab = _crop(self.images[k], self.labels[k], centre, size)
            if augment and on_cell and self.touching and rng.random() < self.touching:
                paste_touching(rng, img, lab, self._cells)
            if size != patch:
                img, lab = zoom_pair(img, lab, patch)
            if augment:
                img, lab = augment_pair(rng, img, lab)
            images[i] = img
            labels[i] = lab
        return Batch(images, labels)


def erase_cells(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, probability: float
) -> None:
    """In place: in a random ``probability`` of the crops, paint the annotated cells over.

    Their pixels (grown by 2 px) get the median and spread of the crop's annotated background
    and become background, so the network also sees background far from any cell.
    """
    if probability <= 0:
        return
    for i in range(len(labels)):
        if rng.random() >= probability:
            continue
        cells, background = labels[i] > 0, labels[i] == 0
        if not cells.any() or background.sum() < 16:
            continue
        values = images[i][background]
        level = np.median(values, axis=0)
        spread = 1.4826 * np.median(np.abs(values - level), axis=0)
        region = ndi.binary_dilation(cells, iterations=2)
        images[i][region] = level + rng.normal(size=(int(region.sum()), values.shape[1])) * spread
        labels[i][cells] = 0


def _crop(
    image: np.ndarray, labels: np.ndarray, centre: tuple[int, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window around ``centre``; outside the image is ignored, image 0."""
    h, w = labels.shape
    y0 = int(centre[0]) - size // 2
    x0 = int(centre[1]) - size // 2
    img = np.zeros((size, size, image.shape[-1]), np.float32)
    lab = np.full((size, size), IGNORE, np.int32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, h), min(x0 + size, w)
    img[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    lab[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = labels[sy0:sy1, sx0:sx1]
    return img, lab


def zoom_pair(image: np.ndarray, labels: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A square crop (S, S, C) and its labels (S, S) brought to ``patch`` x ``patch`` pixels.

    Bilinear for the image (Gaussian-smoothed first when shrinking, sigma (S/patch - 1) / 2),
    nearest for the labels, pixel centres aligned: what ``skimage.transform.resize`` does,
    except that the edge pixels are held rather than mirrored, in a tenth of its time (it
    was 1/8 of a U-Net training step).
    """
    size = labels.shape[0]
    scale = size / patch
    centres = (np.arange(patch) + 0.5) * scale
    nearest = np.minimum(centres.astype(np.intp), size - 1)
    if scale > 1:
        sigma = (scale - 1) / 2
        image = ndi.gaussian_filter(image, (sigma, sigma, 0), mode="mirror")
    source = np.clip(centres - 0.5, 0, size - 1)
    low = np.minimum(source.astype(np.intp), size - 2)
    weight = (source - low).astype(np.float32)[:, None, None]
    rows = image[low] * (1 - weight) + image[low + 1] * weight
    zoomed = rows[:, low] * (1 - weight[:, 0]) + rows[:, low + 1] * weight[:, 0]
    return zoomed.astype(np.float32), labels[np.ix_(nearest, nearest)]
