"""Scores that only look where the user annotated: for tuning thresholds on sparse labels.

A sparse annotation cannot say whether a predicted object in unannotated pixels is right, so
those objects are neither rewarded nor punished. An annotated cell counts as found when one
predicted object overlaps it with IoU >= 0.5 (such a match is unique), or with the stricter
IoU of :data:`IOU_LEVELS`. A predicted object that lies mostly on annotated pixels and matches
no annotated cell is a false positive (a cell in painted background, a fragment, or a merge
of annotated cells).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from ..core.sparse_labels import IGNORE

__all__ = [
    "IOU_LEVELS",
    "TIE_CELLS",
    "annotated_counts",
    "annotated_f1",
    "annotated_scores",
    "judged_windows",
    "near_best",
    "tie_tolerance",
]

T = TypeVar("T")


IOU_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)  # the boundary-aware score's IoU thresholds
TIE_CELLS = 30  # a tie is at most one cell in this many


def tie_tolerance(n_cells: int) -> float:
    """How far below the best a tuning score still counts as equal: one of ``n_cells``
    annotated cells (the F1 step it makes), at most 1 / :data:`TIE_CELLS`. The cells are the
    ones the network trained on, so a peak narrower than that is noise, not a better setting;
    with fewer cells a one-cell step would swallow real differences."""
    return 1.0 / max(int(n_cells), TIE_CELLS)


def judged_windows(
    labels: Sequence[np.ndarray], margin: int, budget: int | None = None, seed: int = 0
) -> list[tuple[int, slice, slice]]:
    """Where a tuning judges: (image index, rows, columns) of each image's annotated pixels'
    box grown by ``margin`` (only objects near annotated pixels can be judged). With a
    ``budget``, images in a seeded order until that many pixels are spent (the image that
    crosses it included); without, every image with annotated pixels, in order."""
    windows: list[tuple[int, slice, slice]] = []
    pixels = 0
    order = (
        range(len(labels))
        if budget is None
        else np.random.default_rng(seed).permutation(len(labels))
    )
    for index in order:
        if budget is not None and pixels >= budget:
            break
        rows, cols = np.nonzero(np.asarray(labels[index]) != IGNORE)
        if rows.size == 0:
            continue
        ys = slice(max(int(rows.min()) - margin, 0), int(rows.max()) + margin + 1)
        xs = slice(max(int(cols.min()) - margin, 0), int(cols.max()) + margin + 1)
        pixels += (ys.stop - ys.start) * (xs.stop - xs.start)
        windows.append((int(index), ys, xs))
    return windows


def near_best(items: Iterable[T], score: Callable[[T], float], n_cells: int) -> list[T]:
    """The ``items`` whose ``score`` lies within :func:`tie_tolerance` of the best: the
    settings a tuning on ``n_cells`` annotated cells cannot tell apart."""
    items = list(items)
    floor = max(score(item) for item in items) - tie_tolerance(n_cells) - 1e-9
    return [item for item in items if score(item) >= floor]


def annotated_counts(
    pred: np.ndarray, internal: np.ndarray, levels: Sequence[float] = (0.5,)
) -> list[tuple[int, int, int]]:
    """True positives, false positives and false negatives of ``pred`` on an annotation, one
    triple per IoU threshold of ``levels`` (the overlaps are measured once)."""
    pred = np.asarray(pred).astype(np.int64, copy=False)
    truth = np.where(internal > 0, internal, 0).astype(np.int64)
    n_pred = int(pred.max()) + 1 if pred.size else 1
    n_true = int(truth.max()) + 1 if truth.size else 1
    both = np.bincount((truth * n_pred + pred).ravel(), minlength=n_true * n_pred)
    overlap = both.reshape(n_true, n_pred)
    true_area = overlap.sum(axis=1)
    pred_area = overlap.sum(axis=0)
    union = true_area[:, None] + pred_area[None, :] - overlap
    ious = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)[1:, 1:]
    true_ids = np.flatnonzero(true_area[1:] > 0)
    pred_ids = np.flatnonzero(pred_area[1:] > 0)
    on_annotation = np.bincount(pred[internal != IGNORE].ravel(), minlength=n_pred)
    mostly_annotated = on_annotation[1:][pred_ids] > 0.5 * pred_area[1:][pred_ids]
    pairs = ious[np.ix_(true_ids, pred_ids)] if len(true_ids) and len(pred_ids) else None
    counts = []
    for level in levels:
        matched = pairs >= level if pairs is not None else None
        tp = int(matched.any(axis=1).sum()) if matched is not None else 0
        pred_matched = matched.any(axis=0) if matched is not None else np.zeros(len(pred_ids), bool)
        fp = int((mostly_annotated & ~pred_matched).sum())
        counts.append((tp, fp, len(true_ids) - tp))
    return counts


def annotated_f1(preds: list[np.ndarray], internals: list[np.ndarray], iou: float = 0.5) -> float:
    """F1 over several images, counting only what the annotations can judge."""
    return float(annotated_scores(preds, internals, (iou,))[0])


def annotated_scores(
    preds: list[np.ndarray], internals: list[np.ndarray], ious: Sequence[float] = IOU_LEVELS
) -> np.ndarray:
    """The annotated F1 at each IoU threshold of ``ious``, over several images. Their mean
    (as DSB 2018 scored) also judges how well objects fit the annotated cells' outlines,
    which F1 at IoU 0.5 alone accepts from a wide range of object sizes."""
    totals = np.zeros((len(ious), 3), np.int64)
    for pred, internal in zip(preds, internals, strict=True):
        totals += np.asarray(annotated_counts(pred, internal, ious), np.int64)
    tp, fp, fn = totals.T
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
