"""Labels brought back from the model's scale: smooth outlines where the image grows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import resize

from napari_cellsparse.models.scale import resize_labels


def ellipses(size: int, n: int, seed: int) -> np.ndarray:
    """Non-overlapping-ish ellipses 20-50 px wide, at any angle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    labels = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(30, size - 30, 2)
        r, ratio, angle = rng.uniform(10, 25), rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        labels[((u / r) ** 2 + (v / (r * ratio)) ** 2 < 1) & (labels == 0)] = k
    return labels


def coarse(truth: np.ndarray, size: int) -> np.ndarray:
    """The best labels a model could give on a coarser grid: each pixel the object that
    covers most of it."""
    ids = np.unique(truth)
    cover = [resize((truth == i).astype(float), (size, size), anti_aliasing=True) for i in ids]
    return ids[np.argmax(cover, axis=0)].astype(np.int32)


def mean_iou(truth: np.ndarray, labels: np.ndarray) -> float:
    ious = []
    for i in np.unique(truth)[1:]:
        a, b = truth == i, labels == i
        ious.append((a & b).sum() / (a | b).sum())
    return float(np.mean(ious))


@pytest.mark.parametrize("factor", [1.5, 2.5, 3.0])
def test_smooth_outlines_fit_the_true_shapes_better_than_copied_blocks(factor: float) -> None:
    truth = ellipses(480, 30, seed=int(10 * factor))
    small = coarse(truth, round(480 / factor))
    blocky = resize_labels(small, truth.shape)
    smooth = resize_labels(small, truth.shape, smooth=True)
    assert set(np.unique(smooth)) == set(np.unique(small))  # every object, no new id
    assert mean_iou(truth, smooth) > mean_iou(truth, blocky) + 0.01
    # the outline moves, the objects stay where they were
    assert ((smooth > 0) != (blocky > 0)).mean() < 0.05


def test_smooth_only_changes_enlarging_and_keeps_the_same_shape_as_it_is() -> None:
    labels = ellipses(120, 5, seed=1)
    assert resize_labels(labels, labels.shape, smooth=True) is labels
    shrunk = resize_labels(labels, (60, 60), smooth=True)
    np.testing.assert_array_equal(shrunk, resize_labels(labels, (60, 60)))
    assert resize_labels(labels.astype(np.uint16), (200, 200), smooth=True).dtype == np.uint16


def test_scattered_fragments_fall_back_to_nearest_neighbour() -> None:
    noise = np.random.default_rng(2).integers(0, 200, (100, 100)).astype(np.int32)
    np.testing.assert_array_equal(
        resize_labels(noise, (250, 250), smooth=True), resize_labels(noise, (250, 250))
    )


def test_an_object_too_small_to_survive_smoothing_keeps_its_pixels() -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[5, 5] = 3  # one pixel
    labels[10:16, 10:16] = 7
    big = resize_labels(labels, (60, 60), smooth=True)
    assert set(np.unique(big)) == {0, 3, 7}
    assert 4 <= (big == 3).sum() <= 16  # about the 3 x 3 block nearest neighbour gives


def test_objects_cut_by_the_image_edge_keep_their_edge() -> None:
    labels = np.zeros((30, 30), np.int32)
    labels[:6, :8] = 4  # a cell cut by the top and left edges
    labels[20:, 25:] = 9  # and one by the bottom and right
    big = resize_labels(labels, (75, 75), smooth=True)
    blocky = resize_labels(labels, (75, 75))
    for label in (4, 9):
        # its pixels on the image's border, two pixels or more from its outline (there,
        # the outline lies between old pixels and either side is right)
        edge = ndi.binary_erosion(blocky == label, iterations=2, border_value=1)
        edge[1:-1, 1:-1] = False
        assert edge.sum() > 20
        assert (big[edge] == label).all()
