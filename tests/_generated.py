"""Generated images shared by the where-to-annotate-next tests (engine and widget)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cellsparse.samples.generated import make_nuclei

HALF = 160


def clean_and_ambiguous(seed: int) -> np.ndarray:
    """A 160 x 320 image: clean separated nuclei left, dim touching odd-shaped cells right."""
    rng = np.random.default_rng(seed)
    clean, _ = make_nuclei((HALF, HALF), n_objects=8, radius=(7.0, 9.0), seed=seed)
    _, labels = make_nuclei((HALF, HALF), n_objects=20, radius=(6.0, 10.0), seed=seed + 1)
    labels = ndi.grey_dilation(labels, size=5)  # grown until neighbours touch and merge
    brightness = rng.uniform(0.1, 0.3, size=labels.max() + 1)
    texture = ndi.gaussian_filter(rng.normal(size=labels.shape), 2.0)
    signal = ndi.gaussian_filter((labels > 0) * brightness[labels] * (1 + 0.8 * texture), 1.0)
    background = 0.08 + 0.05 * np.mgrid[0:HALF, 0:HALF][0] / HALF
    photons = rng.poisson((signal + background) * 800.0) * 20 + 300
    ambiguous = np.clip(photons, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return np.concatenate([clean, ambiguous], axis=1)
