"""StarDist's threshold search, with the network's output and its polygons stood in for by
label images whose annotated F1 depends on ``prob_thresh`` as the test sets it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_cellsparse.training.config import StarDistThresholds
from napari_cellsparse.training.evaluate import tie_tolerance
from napari_cellsparse.training.sampling import SparseDataset
from napari_cellsparse.training.stardist_tuning import search_thresholds

N_CELLS = 30


def thirty_cells() -> np.ndarray:
    """30 separate 6x6 squares on a 96 x 120 annotation, every other pixel background."""
    labels = np.zeros((96, 120), np.int32)
    for k in range(N_CELLS):
        y, x = 4 + 16 * (k // 6), 4 + 20 * (k % 6)
        labels[y : y + 6, x : x + 6] = k + 1
    return labels


def tune(missed: Callable[[float, float], int]) -> StarDistThresholds:
    """The search's choice when ``missed(prob_thresh)`` annotated cells go undetected."""
    truth = thirty_cells()
    image = np.zeros((*truth.shape, 1), np.float32)
    data = SparseDataset([image], [truth])

    prob = np.zeros((48, 60), np.float32)  # on a grid of 2: one candidate per cell centre
    for k in range(N_CELLS):
        prob[(7 + 16 * (k // 6)) // 2, (7 + 20 * (k % 6)) // 2] = 0.99

    def probabilities(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prob, np.full((48, 60, 8), 3.0, np.float32)

    def instances(shape, prob, dist, prob_thresh: float, nms_thresh: float) -> np.ndarray:
        found = truth.copy()
        found[(found > 0) & (found <= missed(prob_thresh, nms_thresh))] = 0
        return found

    return search_thresholds(data, probabilities, instances, (2, 2), StarDistThresholds())


def test_a_peak_narrower_than_one_cell_is_a_plateau_whose_middle_is_kept() -> None:
    """Every cell found at prob 0.65 only, all but one from 0.3 to 0.7 (within one cell of
    30): the middle of 0.3-0.7 is kept. Two cells fewer is a real loss, outside the plateau."""

    def one_short(p: float, nms: float) -> int:
        if abs(p - 0.65) < 1e-6:
            return 0
        return 1 if 0.3 - 1e-6 <= p <= 0.7 + 1e-6 else 5

    chosen = tune(one_short)
    assert (chosen.prob_thresh, chosen.nms_thresh) == (0.5, 0.4)
    assert chosen.tuned_annotated_f1 == 2 * 29 / (2 * 29 + 1)  # the kept setting's own F1

    def two_short(p: float, nms: float) -> int:
        return 0 if abs(p - 0.65) < 1e-6 else 2 if 0.3 - 1e-6 <= p <= 0.7 + 1e-6 else 5

    assert tune(two_short).prob_thresh == 0.65
    assert 1.0 - 2 * 28 / (2 * 28 + 2) > tie_tolerance(N_CELLS) > 1.0 - 2 * 29 / (2 * 29 + 1)
