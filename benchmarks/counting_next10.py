"""The counting ``next10`` protocol: 10 more points where the counter is least sure, or at random.

Starting from the counting user story (``user``: a quarter of the nuclei of 6 training images
as noisy points, painted background), the engine's "where to click next"
(:func:`napari_cellsparse.counting.uncertainty.where_to_click`, with each image's given points
and background, so known places are left out) ranks places on every training image; they are
ranked together by doubt, then by the heat maps' spread, and the true nucleus under each
place's point is taken, best first, skipping places on no nucleus or on one already given or
taken, until ``n``. ``next10_random``: ``n`` nuclei not given, drawn uniformly (seeded) from
all the images. Each added nucleus is given as its centroid moved by up to 3 px, as the
user story's points. Both retrain from scratch with the same seed and steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from counting import NOISE_PX, centroids
from next10 import take_cells


def given_ids(points: np.ndarray, mask: np.ndarray) -> set[int]:
    """The nuclei (mask ids) whose centroid is nearest to each given point."""
    true = centroids(mask)
    ids = np.unique(mask[mask > 0])
    if not len(points) or not len(true):
        return set()
    nearest = np.argmin(np.linalg.norm(points[:, None] - true[None], axis=-1), axis=1)
    return {int(ids[i]) for i in nearest}


def by_map(counter: Any, train: list, points: list, background: list, n: int) -> tuple[list, dict]:
    """Per image, the nuclei ids under the map's top places, and what was seen."""
    from napari_cellsparse.counting.uncertainty import where_to_click

    started = time.perf_counter()
    ranked, n_places = [], []
    for index, ((_, img, _), pts, bg) in enumerate(zip(train, points, background, strict=True)):
        result = where_to_click(counter, img, pts, bg)
        n_places.append(len(result.places))
        ranked += [(-p.score, -p.spread, index, p) for p in result.places]
    ranked.sort(key=lambda item: item[:3])
    known = [given_ids(p, m) for p, (_, _, m) in zip(points, train, strict=True)]
    places = [(index, place.y, place.x) for *_, index, place in ranked]
    taken, (used, no_cell, already) = take_cells(places, [m for *_, m in train], known, n)
    return taken, {
        "places_per_image": n_places,
        "places_used": used,
        "skipped_no_cell": no_cell,
        "skipped_given": already,
        "map_s": round(time.perf_counter() - started, 2),
    }


def at_random(train: list, points: list, n: int, rng: np.random.Generator) -> list[list[int]]:
    """Per image, the ids of ``n`` nuclei not given, drawn uniformly over all images."""
    pool = []
    for index, ((_, _, mask), pts) in enumerate(zip(train, points, strict=True)):
        known = given_ids(pts, mask)
        pool += [(index, int(i)) for i in np.unique(mask[mask > 0]) if int(i) not in known]
    picks = rng.choice(len(pool), min(n, len(pool)), replace=False) if pool else []
    taken: list[list[int]] = [[] for _ in train]
    for p in sorted(int(p) for p in picks):
        index, cell = pool[p]
        taken[index].append(cell)
    return taken


def add_points(
    train: list, points: list, taken: list[list[int]], rng: np.random.Generator
) -> list[np.ndarray]:
    """``points`` plus the centroid of each taken nucleus, moved by up to ``NOISE_PX``."""
    out = []
    for (_, _, mask), pts, ids in zip(train, points, taken, strict=True):
        all_ids = np.unique(mask[mask > 0])
        true = centroids(mask)
        extra = np.array([true[int(np.searchsorted(all_ids, i))] for i in ids]).reshape(-1, 2)
        extra = extra + rng.uniform(-NOISE_PX, NOISE_PX, size=extra.shape)
        extra = np.clip(extra, 0, np.array(mask.shape) - 1)
        out.append(np.concatenate([pts, extra]))
    return out


def run_next10(
    train: list,
    test: list,
    points: list,
    background: list,
    seed: int,
    settings: dict,
    n: int,
    user: tuple[dict[str, Any], Any],
    run_counter: Any,
) -> list[tuple[str, dict[str, Any]]]:
    """The two retrained runs (``next10_map``, ``next10_random``) with their gains over the
    user story's localisation F1 (``user``: its figures and counter; ``run_counter``:
    :func:`counting.run_counter`)."""
    figures_user, counter = user
    rows = []
    taken, seen = by_map(counter, train, points, background, n)
    choices = {
        "next10_map": (taken, seen),
        "next10_random": (at_random(train, points, n, np.random.default_rng(seed + 101)), {}),
    }
    for name, (ids, extra) in choices.items():
        more = add_points(train, points, ids, np.random.default_rng(seed + 202))
        figures, _ = run_counter(name, train, test, more, background, seed, settings)
        figures.update(
            extra,
            added_cells=[len(i) for i in ids],
            base_loc_f1=figures_user["loc_f1"],
            gain=round(figures["loc_f1"] - figures_user["loc_f1"], 4),
        )
        rows.append((name, figures))
    return rows
