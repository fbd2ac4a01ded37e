"""Nuclei-like images generated with known instance labels (the sample, tests, benchmarks)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

__all__ = ["make_nuclei"]


def make_nuclei(
    shape: tuple[int, int] = (512, 512),
    n_objects: int = 60,
    radius: tuple[float, float] = (8.0, 15.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like uint16 image of separated elliptic nuclei and its int32 labels.

    Nuclei have textured, varying brightness on an uneven background with shot noise; they
    never touch (at least 2 px apart), so every label is one object. Deterministic per seed.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, dtype=np.int32)
    occupied = np.zeros(shape, dtype=bool)
    placed = 0
    for _ in range(n_objects * 40):
        if placed == n_objects:
            break
        ry, rx = rng.uniform(*radius, size=2)
        cy = rng.uniform(ry + 2, h - ry - 2)
        cx = rng.uniform(rx + 2, w - rx - 2)
        rr, cc = ellipse(cy, cx, ry, rx, shape=shape, rotation=rng.uniform(0, np.pi))
        if rr.size == 0 or occupied[rr, cc].any():
            continue
        placed += 1
        labels[rr, cc] = placed
        grown = ndimage.binary_dilation(labels == placed, iterations=3)
        occupied |= grown
    brightness = rng.uniform(0.4, 1.0, size=placed + 1)
    brightness[0] = 0.0
    signal = brightness[labels]
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    signal = ndimage.gaussian_filter(signal * (1.0 + 0.6 * texture), 1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    background = 0.08 + 0.05 * (yy / h) + 0.03 * np.sin(xx / w * np.pi)
    photons = rng.poisson((signal + background) * 800.0)
    image = np.clip(photons * 20 + 300, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels
