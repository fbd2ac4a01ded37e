"""How far objects stand out of their surroundings, and the filter of faint predictions."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_cellsparse.training.config import ObjectScale
from napari_cellsparse.training.contrast import (
    faint_floor,
    object_snr,
    typical_snr,
    without_faint,
)


def noisy_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise (sd 0.05) with a cell of contrast 0.5 (label 1) and, far from it, a cell-sized
    patch of the noise alone (label 2): what a network answers in a sparse image's noise."""
    rng = np.random.default_rng(seed)
    signal = 0.1 + 0.05 * rng.standard_normal((96, 96))
    labels = np.zeros(signal.shape, np.int32)
    labels[disk((24, 24), 7)] = 1
    labels[disk((70, 70), 7)] = 2
    signal[labels == 1] += 0.5
    return signal, labels


def test_a_cell_stands_out_and_a_patch_of_noise_does_not() -> None:
    signal, labels = noisy_scene()
    ids, snr = object_snr(labels, signal, ring=8)
    assert list(ids) == [1, 2]
    assert snr[0] > 8 and abs(snr[1]) < 1


def test_faint_objects_go_and_cells_stay() -> None:
    signal, labels = noisy_scene()
    kept = without_faint(labels, signal, ring=8, floor=2.0)
    assert set(np.unique(kept)) == {0, 1}
    np.testing.assert_array_equal(without_faint(labels, signal, ring=8, floor=0.0), labels)


def test_an_object_with_no_surroundings_is_kept() -> None:
    labels = np.ones((10, 10), np.int32)
    ids, snr = object_snr(labels, np.zeros((10, 10)), ring=4)
    assert list(ids) == [1] and np.isinf(snr[0])
    assert without_faint(labels, np.zeros((10, 10)), ring=4, floor=2.0).all()


def test_the_floor_follows_the_annotation_when_its_cells_stand_out_little() -> None:
    assert faint_floor(2.0, 12.0) == 2.0
    assert faint_floor(2.0, 4.0) == pytest.approx(1.0)  # noisy images: a quarter of their cells'
    assert faint_floor(0.0, 12.0) == 0.0  # turned off
    assert faint_floor(2.0, 0.0) == 0.0  # not measured: models saved before it keep everything
    assert ObjectScale.from_stored({"train_diameter": 16.0}).cell_snr == 0.0


def test_annotated_cells_are_measured_against_what_is_not_an_annotated_cell() -> None:
    """Internal labels: cells > 0, background 0, unannotated -1 (both count as around)."""
    signal, labels = noisy_scene()
    internal = np.where(labels == 1, 1, -1)
    internal[:4] = 0
    one = typical_snr([internal], [signal], ring=8)
    assert one == pytest.approx(object_snr(labels == 1, signal, ring=8)[1][0])
    assert typical_snr([np.full((8, 8), -1)], [np.zeros((8, 8))], ring=4) == 0.0


def test_ring_medians_are_those_of_ndimage() -> None:
    from scipy import ndimage

    from napari_cellsparse.training.contrast import _medians

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, (40, 50))
    labels[labels == 4] = 0  # a label with no pixel
    values = rng.standard_normal(labels.shape)
    ids = np.array([1, 2, 3, 5])
    np.testing.assert_allclose(_medians(values, labels)[ids], ndimage.median(values, labels, ids))
    assert np.isnan(_medians(values, labels)[4])
