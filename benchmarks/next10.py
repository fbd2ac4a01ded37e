"""The cells the ``next10`` protocol adds to the user story's annotation.

``by_map``: the engine's "where to annotate next"
(:func:`napari_cellsparse.training.uncertainty.where_to_annotate`) on each training image,
with that image's annotation so annotated pixels are left out; the places of all images are
ranked together by their score (a place's mean doubt, weighted down below a cell's area),
and the ground-truth cell under each place's point is taken, best first, skipping places on
no cell or on a cell already annotated or already taken, until ``n`` cells. ``at_random``:
``n`` unannotated cells drawn uniformly (seeded) from all the images' unannotated cells.
``add_cells`` paints the chosen cells into a copy of the annotation with the same background
band as the user story (``sparse_from_truth``: truth-background pixels within ``band`` px of
the cell).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi


def annotated_truth_ids(annotation: np.ndarray, truth: np.ndarray) -> set[int]:
    """The ground-truth ids of the cells an annotation (0 / 1 / 2+) already has."""
    return {int(i) for i in np.unique(truth[(annotation >= 2) & (truth > 0)])}


def add_cells(annotation: np.ndarray, truth: np.ndarray, ids: list[int], band: int) -> np.ndarray:
    """A copy of ``annotation`` with the truth cells ``ids`` as new cells (next free ids) and
    truth-background pixels within ``band`` px of them painted background where unannotated."""
    out = np.array(annotation, copy=True)
    if not ids:
        return out
    next_id = int(out.max()) + 1
    cells = np.isin(truth, ids)
    near = ndi.binary_dilation(cells, iterations=band) if band > 0 else cells
    out[near & (truth == 0) & (out == 0)] = 1
    for offset, cell in enumerate(ids):
        out[truth == cell] = next_id + offset
    return out


def by_map(
    model: Any,
    images: list[np.ndarray],
    annotations: list[np.ndarray],
    truths: list[np.ndarray],
    n: int,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Per image, the truth ids of the ``n`` cells under the map's top-ranked places, and
    what was seen (places per image, places skipped)."""
    from napari_cellsparse.training.uncertainty import where_to_annotate

    ranked = []
    n_places = []
    for index, (img, ann) in enumerate(zip(images, annotations, strict=True)):
        result = where_to_annotate(model, img, annotation=ann)
        n_places.append(len(result.places))
        ranked += [(place.score, index, place) for place in result.places]
    ranked.sort(key=lambda item: (-item[0], item[1], item[2].y, item[2].x))
    known = [annotated_truth_ids(a, t) for a, t in zip(annotations, truths, strict=True)]
    places = [(index, place.y, place.x) for _, index, place in ranked]
    taken, (used, skipped_no_cell, skipped_known) = take_cells(places, truths, known, n)
    return taken, {
        "places_per_image": n_places,
        "places_used": used,
        "skipped_no_cell": skipped_no_cell,
        "skipped_annotated": skipped_known,
    }


def take_cells(
    places: list[tuple[int, float, float]], truths: list[np.ndarray], known: list[set[int]], n: int
) -> tuple[list[list[int]], tuple[int, int, int]]:
    """Per image, the truth ids under ``places`` ((image index, y, x), best first) until
    ``n``, skipping places on no cell or on a ``known`` or already taken one; and how many
    places were read, on no cell, on a known or taken cell."""
    taken: list[list[int]] = [[] for _ in truths]
    no_cell = again = used = 0
    for index, py, px in places:
        if sum(map(len, taken)) == n:
            break
        used += 1
        truth = truths[index]
        y = min(max(round(py), 0), truth.shape[0] - 1)
        x = min(max(round(px), 0), truth.shape[1] - 1)
        cell = int(truth[y, x])
        if cell == 0:
            no_cell += 1
        elif cell in known[index] or cell in taken[index]:
            again += 1
        else:
            taken[index].append(cell)
    return taken, (used, no_cell, again)


def at_random(
    annotations: list[np.ndarray], truths: list[np.ndarray], n: int, rng: np.random.Generator
) -> list[list[int]]:
    """Per image, the truth ids of ``n`` unannotated cells drawn uniformly over all images."""
    pool = []
    for index, (ann, truth) in enumerate(zip(annotations, truths, strict=True)):
        known = annotated_truth_ids(ann, truth)
        pool += [(index, int(i)) for i in np.unique(truth[truth > 0]) if int(i) not in known]
    picks = rng.choice(len(pool), min(n, len(pool)), replace=False) if pool else []
    taken: list[list[int]] = [[] for _ in annotations]
    for p in sorted(int(p) for p in picks):
        index, cell = pool[p]
        taken[index].append(cell)
    return taken
