"""Matching detected centres to known ones (one-to-one, Hungarian) and the F1 it gives."""

from __future__ import annotations

import numpy as np

__all__ = ["localisation_f1", "match_centres"]


def match_centres(
    found: np.ndarray, truth: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``found``, into ``truth``) of the one-to-one pairs closer than
    ``max_distance`` that maximise the number of pairs (then minimise their distances)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    found = np.asarray(found, np.float64).reshape(-1, 2)
    truth = np.asarray(truth, np.float64).reshape(-1, 2)
    empty = np.zeros(0, int)
    if not len(found) or not len(truth):
        return empty, empty
    reach = cKDTree(found).query_ball_tree(cKDTree(truth), max_distance)
    pairs = np.array([(i, j) for i, js in enumerate(reach) for j in js], int).reshape(-1, 2)
    if not len(pairs):
        return empty, empty
    rows, row_idx = np.unique(pairs[:, 0], return_inverse=True)
    cols, col_idx = np.unique(pairs[:, 1], return_inverse=True)
    distance = np.linalg.norm(found[pairs[:, 0]] - truth[pairs[:, 1]], axis=1)
    # Within reach a pair costs its distance minus a large constant, so the assignment first
    # maximises the number of pairs; out of reach is never chosen.
    big = 1e6
    cost = np.full((len(rows), len(cols)), big)
    cost[row_idx, col_idx] = distance - big
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] < 0
    return rows[r[keep]], cols[c[keep]]


def localisation_f1(found: np.ndarray, truth: np.ndarray, max_distance: float) -> float:
    """F1 of detected centres against true ones, a true positive within ``max_distance``."""
    n_found, n_truth = len(np.asarray(found).reshape(-1, 2)), len(np.asarray(truth).reshape(-1, 2))
    if n_found + n_truth == 0:
        return 1.0
    matched = len(match_centres(found, truth, max_distance)[0])
    return 2.0 * matched / (n_found + n_truth)
