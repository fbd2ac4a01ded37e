"""Where to annotate next: where a trained model is least sure of its own segmentation.

Test-time augmentation: the image is predicted under the 8 flips and quarter turns of the
square (one shared normalisation and one diameter, so all 8 see the same scale), each result
is turned back, and the 8 label images are compared. For prediction ``k`` a pixel inside one
of its objects scores ``1 - mean IoU`` of that object with its best match in each other
prediction (so a cell split in two, merged with a neighbour or shrunk in some views scores
high), and a background pixel scores the fraction of the other predictions that call it
foreground. The map is the mean over the 8 predictions: 0 where all agree, at most 1.

Places are ranked by object. Each object of the unturned view on which the views disagree
at all is one place, and so is each connected region of doubtful pixels (map at or above
``threshold``) outside those objects (cells the unturned view missed or others invented). A
place's score is its mean doubt, weighted down for places smaller than a typical cell:
``mean x min(1, area / cell area)``. Objects are ranked however slight their doubt: a model
sure of most cells still has a least sure one, and a ranking that kept only objects whose
mean doubt reached ``threshold`` offered 4-5 places over three training images and none on
two of them once the model improved (``benchmarks/README.md``, where to annotate next).
Ranking by the map's sum over connected regions instead let one clump of doubtful cells
outweigh every single doubtful cell elsewhere: in the benchmark all ten places of three
images lay on one image. Pixels already annotated are known and left out of the map and of
every place; a place's point is its centroid, or its pixel nearest the centroid when the
centroid falls outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from ..core.errors import BadInputError
from ..core.images import is_flat, normalize
from ..core.masks import point_inside
from ..core.progress import Progress, check_cancel, run_sync
from ..core.sparse_labels import IGNORE, to_internal
from .inputs import prediction_slices
from .model import TrainedModel

__all__ = [
    "UncertaintyResult",
    "WherePlace",
    "disagreement",
    "place_pieces",
    "predict_view",
    "rank_places",
    "uncertainty_iter",
    "where_to_annotate",
]

N_VIEWS = 8  # the 4 quarter turns, each with and without a flip
THRESHOLD = 0.25  # map value from which a pixel counts as doubtful
MIN_AREA_FRACTION = 0.25  # smallest place, as a fraction of a typical cell's area


@dataclass(frozen=True)
class WherePlace:
    """One doubtful object or region: its point (pixels), area (pixels), ``score`` (what
    places are ranked by: the mean map value, weighted down below a cell's area) and mean
    map value."""

    y: float
    x: float
    area: int
    score: float
    mean: float


@dataclass(frozen=True)
class UncertaintyResult:
    """The disagreement map (float32, 0..1, 0 where annotated) and the places, best first."""

    map: np.ndarray
    places: tuple[WherePlace, ...]
    diameter: float


def _view(array: np.ndarray, k: int) -> np.ndarray:
    """``array`` (Y, X, ...) under transform ``k`` of the 8: ``k % 4`` quarter turns, then
    a left-right flip when ``k >= 4``."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _unview(array: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`_view`."""
    out = array[:, ::-1] if k >= 4 else array
    return np.ascontiguousarray(np.rot90(out, -(k % 4), axes=(0, 1)))


def predict_view(
    model: TrainedModel, normalized: np.ndarray, diameter: float, k: int
) -> np.ndarray:
    """The labels of ``normalized`` (YXC) predicted under view ``k``, turned back."""
    return _unview(model.predict_normalized(_view(normalized, k), diameter), k)


def _best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For every id of ``a`` (index = id, 0 unused), its best IoU with an object of ``b``;
    only the overlapping pairs are counted, so thousands of objects stay cheap."""
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    both = (a > 0) & (b > 0)
    codes, overlap = np.unique(
        a[both].astype(np.int64) * nb + b[both].astype(np.int64), return_counts=True
    )
    ia, ib = codes // nb, codes % nb
    size_a = np.bincount(a.ravel(), minlength=na)
    size_b = np.bincount(b.ravel(), minlength=nb)
    iou = overlap / (size_a[ia] + size_b[ib] - overlap)
    best = np.zeros(na)
    np.maximum.at(best, ia, iou)
    return best


def disagreement(predictions: list[np.ndarray]) -> np.ndarray:
    """The per-pixel disagreement (float32, 0..1) of label images of the same pixels."""
    n = len(predictions)
    if n < 2:
        raise BadInputError("Disagreement needs at least two predictions.")
    foreground = np.sum([p > 0 for p in predictions], axis=0, dtype=np.float64)
    total = np.zeros(predictions[0].shape, np.float64)
    for k, labels in enumerate(predictions):
        doubt = np.zeros(int(labels.max()) + 1)
        for j, other in enumerate(predictions):
            if j != k:
                doubt += 1.0 - _best_iou(labels, other)
        doubt /= n - 1
        inside = labels > 0
        others_fg = (foreground - inside) / (n - 1)
        total += np.where(inside, doubt[labels], others_fg)
    return np.clip(total / n, 0.0, 1.0).astype(np.float32)


def place_pieces(doubt: np.ndarray, objects: np.ndarray, threshold: float) -> np.ndarray:
    """Label image of the candidate places: every object of ``objects`` (the unturned view),
    then each connected region of ``doubt >= threshold`` outside them, numbered after."""
    pieces = relabel_sequential(np.asarray(objects, np.int64))[0]
    outside, _ = ndi.label((doubt >= threshold) & (pieces == 0))
    offset = int(pieces.max())
    return np.where(outside > 0, outside + offset, pieces)


def rank_places(
    doubt: np.ndarray,
    objects: np.ndarray,
    cell_area: float,
    threshold: float = THRESHOLD,
    known: np.ndarray | None = None,
) -> tuple[WherePlace, ...]:
    """The places (see the module docstring) with some doubt and an area of at least a
    quarter of ``cell_area``, best first. ``known`` pixels (annotated) belong to no place."""
    pieces = place_pieces(doubt, objects, threshold)
    if known is not None:
        pieces = np.where(known, 0, pieces)
    n = int(pieces.max())
    if n == 0:
        return ()
    ids = np.arange(1, n + 1)
    areas = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(pieces.ravel(), weights=doubt.ravel(), minlength=n + 1)[1:]
    boxes = ndi.find_objects(pieces)
    places = []
    for i, area, total, box in zip(ids, areas, sums, boxes, strict=True):
        if box is None or area < MIN_AREA_FRACTION * cell_area or total <= 0.0:
            continue
        piece = pieces[box] == i
        cy, cx = ndi.center_of_mass(piece)
        cy, cx = point_inside(piece, cy, cx)
        mean = float(total / area)
        places.append(
            WherePlace(
                y=float(cy + box[0].start),
                x=float(cx + box[1].start),
                area=int(area),
                score=mean * min(1.0, float(area) / cell_area),
                mean=mean,
            )
        )
    return tuple(sorted(places, key=lambda p: (-p.score, p.y, p.x)))


def uncertainty_iter(
    model: TrainedModel,
    image: np.ndarray,
    diameter: float | None = None,
    annotation: np.ndarray | None = None,
    axes: str | None = None,
    threshold: float = THRESHOLD,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, UncertaintyResult]:
    """Where ``model`` is least sure on one 2D ``image`` (YX or YXC); 8 predictions.

    ``diameter`` (pixels) of the cells; None estimates it once for all views. ``annotation``
    (layer convention: 0 not annotated, 1 background, 2+ cells) marks pixels already known:
    they are 0 in the map and in no place.
    """
    if not 0.0 < threshold < 1.0:
        raise BadInputError(f"The threshold must lie between 0 and 1, got {threshold!r}.")
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise BadInputError(f"The diameter must be a positive number, got {diameter!r}.")
    slices, label_shape = prediction_slices(image, model.n_channels, axes)
    if len(slices) != 1:
        raise BadInputError(
            f"Where to annotate next works on one 2D image; this one has {len(slices)} "
            "slices. Choose a single plane."
        )
    known = None
    if annotation is not None:
        internal = to_internal(annotation)
        if internal.shape != tuple(label_shape):
            raise BadInputError(
                f"The annotation has shape {internal.shape} but the image's pixels are "
                f"{tuple(label_shape)}; they must cover the same pixels."
            )
        known = internal != IGNORE
    raw = slices[0]
    shape = raw.shape[:2]
    if is_flat(raw):
        return UncertaintyResult(np.zeros(shape, np.float32), (), float(diameter or 0.0))
    yield Progress(0, N_VIEWS + 1, "Normalising the image")
    normalized = normalize(raw)
    d = float(diameter) if diameter is not None else model.estimate_diameter(normalized)
    predictions = []
    for k in range(N_VIEWS):
        check_cancel(cancel)
        yield Progress(k, N_VIEWS + 1, f"Predicting view {k + 1}/{N_VIEWS}")
        predictions.append(predict_view(model, normalized, d, k))
    check_cancel(cancel)
    yield Progress(N_VIEWS, N_VIEWS + 1, "Comparing the views")
    doubt = disagreement(predictions)
    if known is not None:
        doubt[known] = 0.0
    places = rank_places(doubt, predictions[0], np.pi / 4.0 * d * d, threshold, known)
    yield Progress(N_VIEWS + 1, N_VIEWS + 1, f"Found {len(places)} place(s) to annotate")
    return UncertaintyResult(doubt, places, d)


def where_to_annotate(
    model: TrainedModel,
    image: np.ndarray,
    diameter: float | None = None,
    annotation: np.ndarray | None = None,
    axes: str | None = None,
    threshold: float = THRESHOLD,
) -> UncertaintyResult:
    """:func:`uncertainty_iter` drained: the map and the ranked places."""
    return run_sync(uncertainty_iter(model, image, diameter, annotation, axes, threshold))
