"""The augmentation every model here trains with: the same flips and turns for image and
targets, then contrast, brightness and noise on the image only."""

from __future__ import annotations

import numpy as np

__all__ = ["augment_pair"]


def augment_pair(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90° turns (same for both), then contrast, brightness and noise.

    ``labels`` is anything laid out like the image's first two axes (class ids, or a stack of
    target maps); only the image's intensities change.
    """
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    contrast = np.exp(rng.uniform(np.log(0.6), np.log(1.5)))
    brightness = rng.uniform(-0.15, 0.15)
    image = image * contrast + brightness
    if rng.random() < 0.3:
        image = image + rng.normal(0.0, rng.uniform(0.0, 0.05), image.shape)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(labels)
