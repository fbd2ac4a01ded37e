"""Where to click next for a counter: where its readings of the image's 8 views disagree.

The counter's count reads the mean heat map of the image's 8 flips and quarter turns. Here
each view is read alone and its centres found as at count time (same threshold, prominence
and foreground support). The centres of all views are grouped (within half a cell diameter
of one another) and each group is a place. Its doubt is ``4 p (1 - p)``, ``p`` the share of
the views that found it: 0 where all agree, 1 where half of them do. The map is the spread
(standard deviation) of the 8 heat maps (each 0..1), doubled to fill 0..1: bright where the
views disagree on whether, or where, a cell is. Places are ranked by doubt, then by the map
at their point: a user-story counter's views agree on whether there is a cell at all but at
a few places per image (a DSB 2018 counter, 6 training images: 10 such places), so the
cells all views found are ranked too, the least steady first, as "where to annotate next"
ranks every object the segmentation views disagree on at all. A place near a given point or
on painted background is known and left out.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..core.errors import BadInputError
from ..core.progress import Progress, check_cancel, run_sync
from ..models.scale import rescale_image
from .centres import pixel_indices
from .counter import Counter, to_image_pixels
from .network import pad_multiple, view_heatmaps

__all__ = [
    "ClickPlace",
    "ClickUncertainty",
    "click_uncertainty_iter",
    "group_centres",
    "where_to_click",
]

N_VIEWS = 8
GROUP_REACH = 0.5  # centres of different views this close (in cell diameters) are one cell


@dataclass(frozen=True)
class ClickPlace:
    """A cell found by one or more views: its point (image pixels, the mean of the views'
    centres), how many of the 8 views found it, its doubt ``4 p (1 - p)`` and the map (the
    spread of the views' heat maps, 0..1) at its point."""

    y: float
    x: float
    views: int
    score: float
    spread: float


@dataclass(frozen=True)
class ClickUncertainty:
    """The spread of the views' heat maps (float32, 0..1, image-sized) and the places, best
    first; ``diameter`` is the cell diameter (pixels) the image was read at."""

    map: np.ndarray
    places: tuple[ClickPlace, ...]
    diameter: float


def group_centres(view_centres: list[np.ndarray], reach: float) -> list[tuple[float, float, int]]:
    """(y, x, views) per group of centres (one array N x 2 per view) closer than ``reach``
    to one another; ``views`` counts the distinct views in the group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    arrays = [np.asarray(c, np.float64).reshape(-1, 2) for c in view_centres]
    points = np.concatenate(arrays) if arrays else np.zeros((0, 2))
    if not len(points):
        return []
    view = np.concatenate([np.full(len(c), k) for k, c in enumerate(arrays)])
    pairs = cKDTree(points).query_pairs(reach, output_type="ndarray")
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    out = []
    for g in range(int(group.max()) + 1):
        members = group == g
        y, x = points[members].mean(axis=0)
        out.append((float(y), float(x), len(np.unique(view[members]))))
    return out


def _known(
    xy: np.ndarray, points: np.ndarray | None, background: np.ndarray | None, reach: float
) -> np.ndarray:
    """Which places (N x 2, y x) lie near a given point or on painted background."""
    from scipy.spatial import cKDTree

    known = np.zeros(len(xy), bool)
    if points is not None and len(points):
        distance, _ = cKDTree(np.asarray(points, np.float64).reshape(-1, 2)).query(xy)
        known |= distance <= reach
    if background is not None:
        known |= np.asarray(background, bool)[tuple(pixel_indices(xy, background.shape).T)]
    return known


def click_uncertainty_iter(
    counter: Counter,
    image: np.ndarray,
    points: np.ndarray | None = None,
    background: np.ndarray | None = None,
    diameter: float | None = None,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, ClickUncertainty]:
    """Where ``counter``'s 8 views of a 2D ``image`` (YX or YXC) disagree on cells.

    ``points`` (N x 2, y x): the points already given; ``background``: painted background
    (boolean, the image's pixels); places near the one or on the other are left out.
    ``diameter``: the cells' diameter in pixels (default: estimated as when counting).
    """
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise BadInputError(f"The diameter must be a positive number, got {diameter!r}.")
    normalized = counter.prepare(image)
    shape = normalized.shape[:2]
    if background is not None and np.shape(background) != shape:
        raise BadInputError(
            f"The background has shape {np.shape(background)} but the image's pixels are "
            f"{shape}; they must cover the same pixels."
        )
    yield Progress(0, N_VIEWS + 1, "Reading the cell size")
    d = float(diameter) if diameter is not None else counter.estimate_diameter(normalized)
    scaled = rescale_image(normalized, counter.scale_factor(d))
    multiple = pad_multiple(counter.config.to_dict())
    heats = []
    for k, heat in enumerate(view_heatmaps(counter.net, scaled, multiple, counter.device)):
        check_cancel(cancel)
        yield Progress(k + 1, N_VIEWS + 1, f"Reading view {k + 1}/{N_VIEWS}")
        heats.append(heat)
    mean = np.mean(heats, axis=0)
    support = counter.support(mean, counter.foreground(normalized, d), d)
    centres = [
        to_image_pixels(counter.centres(h, support=support), scaled.shape, shape) for h in heats
    ]
    groups = group_centres(centres, GROUP_REACH * d)
    xy = np.array([(y, x) for y, x, _ in groups], np.float64).reshape(-1, 2)
    known = _known(xy, points, background, GROUP_REACH * d)
    spread = np.clip(2.0 * _image_sized(np.std(heats, axis=0), shape), 0.0, 1.0)
    if background is not None:
        spread[np.asarray(background, bool)] = 0.0
    at = spread[tuple(pixel_indices(xy, shape).T)]
    places = []
    for (y, x, views), done, here in zip(groups, known, at, strict=True):
        if not done:
            share = views / N_VIEWS
            places.append(ClickPlace(y, x, views, 4.0 * share * (1.0 - share), float(here)))
    places.sort(key=lambda p: (-p.score, -p.spread, p.y, p.x))
    yield Progress(N_VIEWS + 1, N_VIEWS + 1, f"Found {len(places)} place(s) to click")
    return ClickUncertainty(spread.astype(np.float32), tuple(places), d)


def _image_sized(map_: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A map at the reading's scale resized to the image's pixels (linear)."""
    from skimage.transform import resize

    if map_.shape == tuple(shape[:2]):
        return map_.astype(np.float64)
    return resize(map_.astype(np.float64), shape[:2], order=1, mode="edge", anti_aliasing=False)


def where_to_click(
    counter: Counter,
    image: np.ndarray,
    points: np.ndarray | None = None,
    background: np.ndarray | None = None,
    diameter: float | None = None,
) -> ClickUncertainty:
    """:func:`click_uncertainty_iter` drained: the map and the ranked places."""
    return run_sync(click_uncertainty_iter(counter, image, points, background, diameter))
