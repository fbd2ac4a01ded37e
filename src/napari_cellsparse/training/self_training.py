"""Self-training: the model's own confident cells in unannotated pixels join its annotation.

After training (when ``TrainingConfig.self_training`` is above 0) the model predicts each
training image under the 8 flips and quarter turns, as "where to annotate next" does. An
object of the unturned view becomes a cell of the training annotation when the views agree
on it (its mean disagreement at most ``MAX_DOUBT``), when it lies in unannotated pixels (at
most ``MAX_KNOWN_SHARE`` of it on annotated ones, which keep their label) and when its area
is within ``AREA_RANGE`` times the annotated cells' median. Training then goes on with those
cells for ``self_training`` times the steps. Only unannotated pixels change, and only into
cells: an unannotated pixel never becomes a "background" target, so the sparse principle
holds. The person's annotation itself is never changed; the added cells live in the
training data only.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

from ..core.images import is_flat, normalize
from ..core.sparse_labels import IGNORE
from ..models.scale import annotated_diameters
from .model import TrainedModel
from .uncertainty import N_VIEWS, disagreement, predict_view

__all__ = ["add_cells", "confident_cells", "pseudo_label"]

MAX_DOUBT = 0.2  # mean disagreement of the 8 views over an object (mean IoU about 0.8)
MAX_KNOWN_SHARE = 0.1  # share of an object that may lie on annotated pixels
AREA_RANGE = (0.25, 4.0)  # times the median area of the annotated cells


def confident_cells(
    model: TrainedModel, image: np.ndarray, internal: np.ndarray, cell_area: float
) -> np.ndarray:
    """The objects (int32 labels, 1..N) of ``model`` on one YXC training ``image`` that may
    join its ``internal`` annotation (-1 ignore / 0 background / >0 cells), at the scale of
    the image's own annotated cells."""
    if is_flat(image):
        return np.zeros(internal.shape, np.int32)
    normalized = normalize(image)
    own = annotated_diameters(internal)
    diameter = float(np.median(own)) if len(own) else model.scale.train_diameter
    views = [predict_view(model, normalized, diameter, k) for k in range(N_VIEWS)]
    objects = views[0].astype(np.int64)
    n = int(objects.max()) + 1
    if n == 1:
        return np.zeros(internal.shape, np.int32)
    area = np.bincount(objects.ravel(), minlength=n).astype(float)
    doubt = np.bincount(objects.ravel(), weights=disagreement(views).ravel(), minlength=n)
    known = np.bincount(objects.ravel(), weights=(internal != IGNORE).ravel(), minlength=n)
    low, high = AREA_RANGE[0] * cell_area, AREA_RANGE[1] * cell_area
    keep = (
        (doubt <= MAX_DOUBT * area)
        & (known <= MAX_KNOWN_SHARE * area)
        & (area >= low)
        & (area <= high)
    )
    keep[0] = False
    return relabel_sequential(np.where(keep[objects], objects, 0).astype(np.int32))[0]


def add_cells(internal: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """A copy of ``internal`` with ``cells`` (labels) as new cells on its ignored pixels
    only; annotated cells and painted background stay as they are."""
    out = np.array(internal, copy=True)
    free = (out == IGNORE) & (cells > 0)
    out[free] = cells[free].astype(out.dtype) + max(int(out.max()), 0)
    return out


def pseudo_label(
    model: TrainedModel, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """``pairs`` (YXC image, internal labels) with the model's confident cells added, and
    how many cells were added."""
    areas = np.concatenate([np.bincount(lab[lab > 0].ravel())[1:] for _, lab in pairs])
    areas = areas[areas > 0]
    cell_area = float(np.median(areas)) if len(areas) else 0.0
    if cell_area <= 0.0:
        return pairs, 0
    grown, added = [], 0
    for image, internal in pairs:
        cells = confident_cells(model, image, internal, cell_area)
        added += int(cells.max())
        grown.append((image, add_cells(internal, cells)))
    return grown, added
