"""StarDist's threshold search: ``prob_thresh``/``nms_thresh`` with the best annotated F1.

Scores within one annotated cell of the best (at most 1/30) count as equal, and the chosen
``prob_thresh`` is the one nearest the middle of that plateau: the few annotated cells are
the ones the network trained on, and the peak of their F1 is a poor guide to unseen cells.
On the DSB 2018 user story's 37 unused training images, the three StarDist models scored F1
0.797 / 0.820 / 0.819 at the thresholds of the exact best's plateau (0.675, 0.2, 0.2) and
0.837 / 0.835 / 0.805 at those of the one-cell plateau (0.5, 0.3, 0.4).

The network runs once per image; only upstream's NMS and polygon step are repeated per
threshold, and only for candidates close enough to an annotated pixel to overlap it (the
others cannot change the annotated F1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..core.sparse_labels import IGNORE, count_cells
from .config import StarDistThresholds
from .evaluate import annotated_f1, near_best
from .sampling import SparseDataset

__all__ = ["search_thresholds"]

# Threshold grids: a coarse pass over prob_thresh, then a finer one around the best plateau.
NMS_GRID = (0.3, 0.4, 0.5)
PROB_COARSE = tuple(round(0.1 * i, 2) for i in range(1, 10))
PROB_FINE_OFFSETS = (-0.075, -0.05, -0.025, 0.025, 0.05, 0.075)

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Instances = Callable[[tuple[int, int], np.ndarray, np.ndarray, float, float], np.ndarray]


def search_thresholds(
    data: SparseDataset,
    probabilities: Predict,
    instances: Instances,
    grid: tuple[int, ...],
    current: StarDistThresholds,
) -> StarDistThresholds:
    """The best thresholds; ``current`` (with F1 0) when nothing is found at any of them.

    ``probabilities(image)`` gives the dense prediction (prob, dist) on a ``grid``;
    ``instances(shape, prob, dist, prob_thresh, nms_thresh)`` the labels at thresholds.
    """
    predictions = []
    for image, internal in zip(data.images, data.labels, strict=True):
        prob, dist = probabilities(image)
        near = _near_annotation(prob, dist, internal, grid)
        predictions.append((image.shape[:2], near, dist))
    scores: dict[tuple[float, float], float] = {}

    def score(p: float, nms: float) -> float:
        key = (round(p, 3), nms)
        if key in scores:
            return scores[key]
        # An undertrained network makes nearly every pixel a candidate with large
        # polygons, and the NMS then takes seconds per image for a useless answer.
        if any(int((pr > key[0]).sum()) > _max_candidates(pr) for _, pr, _ in predictions):
            scores[key] = 0.0
        else:
            preds = [instances(s, pr, di, key[0], nms) for s, pr, di in predictions]
            scores[key] = annotated_f1(preds, data.labels)
        return scores[key]

    n_cells = count_cells(data.labels)

    def choice() -> tuple[float, float, list[float]]:
        best = max(scores.values())
        tied = [k for k, _ in near_best(scores.items(), lambda kv: kv[1], n_cells)]
        # Prefer upstream's nms 0.4 among equals, and the middle of the prob plateau.
        nms = min({k[1] for k in tied}, key=lambda t: (abs(t - 0.4), t))
        return best, nms, sorted(k[0] for k in tied if k[1] == nms)

    for nms in NMS_GRID:
        for p in PROB_COARSE:
            score(p, nms)
    best, nms, plateau = choice()
    if best <= 0.0:  # nothing found at any threshold: nothing to judge by, keep them
        return replace(current, tuned_annotated_f1=0.0)
    for edge in sorted({plateau[0], plateau[-1]}):
        for offset in PROB_FINE_OFFSETS:
            if 0.0 < edge + offset < 1.0:
                score(edge + offset, nms)
    _, nms, plateau = choice()
    middle = 0.5 * (plateau[0] + plateau[-1])
    prob = min(plateau, key=lambda p: (abs(p - middle), p))
    return StarDistThresholds(
        prob_thresh=float(prob), nms_thresh=float(nms), tuned_annotated_f1=scores[(prob, nms)]
    )


def _max_candidates(near_prob: np.ndarray) -> int:
    """Most NMS candidates worth trying: half the grid points near the annotation."""
    return max(2000, int(0.5 * np.count_nonzero(near_prob)))


def _near_annotation(
    prob: np.ndarray, dist: np.ndarray, internal: np.ndarray, grid: tuple[int, ...]
) -> np.ndarray:
    """``prob`` set to 0 where a polygon could not reach an annotated pixel (faster NMS)."""
    from scipy import ndimage as ndi

    away = ndi.distance_transform_edt(internal == IGNORE)
    rows = np.minimum(np.arange(prob.shape[0]) * int(grid[0]), internal.shape[0] - 1)
    cols = np.minimum(np.arange(prob.shape[1]) * int(grid[1]), internal.shape[1] - 1)
    reach = float(dist.max()) + 2.0 if dist.size else 0.0
    return np.where(away[np.ix_(rows, cols)] <= reach, prob, 0.0).astype(prob.dtype)
