"""Training crops: the zoom keeps image and labels aligned, as skimage's resize would."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

from napari_cellsparse.training.sampling import SparseDataset, zoom_pair


@pytest.mark.parametrize("size", [9, 100, 128, 161])
def test_zoom_matches_skimage_resize_inside_the_edge_pixels(size: int) -> None:
    rng = np.random.default_rng(size)
    image = rng.random((size, size, 2)).astype(np.float32)
    labels = rng.integers(-1, 5, (size, size)).astype(np.int32)
    patch = 8 if size < 16 else 128
    zoomed, zoomed_labels = zoom_pair(image, labels, patch)
    expected = resize(
        image, (patch, patch), order=1, preserve_range=True, anti_aliasing=size > patch
    )
    expected_labels = resize(labels, (patch, patch), order=0, preserve_range=True)
    assert zoomed.shape == (patch, patch, 2) and zoomed.dtype == np.float32
    np.testing.assert_allclose(zoomed[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-5)
    np.testing.assert_array_equal(zoomed_labels, expected_labels.astype(np.int32))


def test_crops_keep_the_ignore_mask_on_the_pixels_it_describes() -> None:
    """A ramp image whose labels are two value bands: after cropping, zooming, flips and
    turns, each crop's band-0 pixels stay darker than its band-3 pixels."""
    image = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (200, 1))[..., None]
    labels = np.full((200, 200), -1, np.int32)
    labels[:, 70:98] = 0
    labels[:, 102:130] = 3
    batch = SparseDataset([image], [labels]).sample_batch(np.random.default_rng(0), 16, 32)
    both = 0
    for img, lab in zip(batch.images[..., 0], batch.labels, strict=True):
        assert np.isin(lab, [-1, 0, 3]).all()
        if (lab == 0).any() and (lab == 3).any():
            both += 1
            assert np.median(img[lab == 0]) + 0.01 < np.median(img[lab == 3])
    assert both > 0
