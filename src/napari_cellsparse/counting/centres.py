"""Cell centres from a counter's heat map, refined below the heat map's pixel.

:func:`find_centres` takes the heat map's local maxima and moves each to the centroid of its
peak (sub-pixel). The heat map is read at the counter's canonical scale, so for large cells
one of its pixels spans several image pixels, and the network places the centre of an
elongated or irregular nucleus only roughly. :func:`snap_to_foreground` then moves each centre
to the centroid of its share of the image's cell foreground: the foreground pixels nearer to
it than to any other centre. On DSB 2018 fluorescence this took the localisation F1 (5 px) of
images of 40-50 px nuclei from 0.78 to 0.84, and brought the centres closer to the true
centroids (mean distance) on 31 of the 40 training images. A centre alone on its foreground
region takes the whole region's centroid: the share's reach cut off the far side of large or
elongated nuclei (counting user story, three counters, localisation F1 +0.000 to +0.003 on the
34 training images they did not train on, +0.007 to +0.011 on ``fluo/test``; a longer reach for
every centre lost 0.001 to 0.006 on the former).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cell_support", "find_centres", "pixel_indices", "snap_to_foreground"]

SUPPORT_MARGIN = 0.25  # in cell diameters around the foreground

SNAP_REACH = 0.75  # foreground pixels further than this (in diameters) from every centre: none
SNAP_MAX_MOVE = 0.3  # a centre moves at most this far (in diameters)
SNAP_MIN_PIXELS = 3


def find_centres(
    heat: np.ndarray, threshold: float, min_distance: float, refine: float = 0.0
) -> np.ndarray:
    """Local maxima (N x 2 float, y x) of ``heat`` above ``threshold``, ``min_distance`` apart.

    ``refine`` > 0: each maximum moves to the heat-weighted centroid of the part of its
    peak above half its height, within ``refine`` pixels: sub-pixel centres, which matter
    when the heat map is at a coarser scale than the image (large cells).
    """
    from skimage.feature import peak_local_max

    peaks = peak_local_max(
        heat,
        min_distance=max(1, round(min_distance)),
        threshold_abs=threshold,
        exclude_border=False,
    )
    centres = peaks.astype(np.float64).reshape(-1, 2)
    if refine <= 0 or not len(peaks):
        return centres
    reach = int(np.ceil(refine)) + 1
    offsets = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    h, w = heat.shape
    for i, (y, x) in enumerate(peaks):
        ys, xs = y + dy, x + dx
        valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = ys[valid], xs[valid]
        weight = np.clip(heat[ys, xs] - 0.5 * heat[y, x], 0.0, None)
        for _ in range(3):  # centroid in a disc around the estimate, until it settles
            near = weight * (((ys - centres[i, 0]) ** 2 + (xs - centres[i, 1]) ** 2) <= refine**2)
            total = float(near.sum())
            if total <= 0:
                break
            centres[i] = float((near * ys).sum()) / total, float((near * xs).sum()) / total
    return centres


def snap_to_foreground(
    centres: np.ndarray,
    foreground: np.ndarray,
    diameter: float,
    reach: float = SNAP_REACH,
    max_move: float = SNAP_MAX_MOVE,
) -> np.ndarray:
    """``centres`` (N x 2, y x, image pixels) each moved to the centroid of its foreground share.

    A centre's share is the ``foreground`` pixels nearer to it than to any other centre and
    within ``reach`` cell diameters; a centre alone on its connected foreground region takes the
    whole region. A centre stays where it is when its share is a few pixels or its centroid is
    more than ``max_move`` diameters away (a share that takes in a cell the heat map missed, or
    the edge of a clump, is not that cell).
    """
    from scipy.spatial import cKDTree

    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    if not len(centres) or not foreground.any():
        return centres
    pixels = np.argwhere(foreground).astype(np.float64)
    lone = _lone_region_centroids(centres, foreground)
    distance, owner = cKDTree(centres).query(pixels, distance_upper_bound=reach * diameter)
    inside = np.isfinite(distance)
    owner, pixels = owner[inside], pixels[inside]
    n = len(centres)
    counts = np.bincount(owner, minlength=n)
    sums = np.stack([np.bincount(owner, pixels[:, k], minlength=n) for k in (0, 1)], axis=1)
    enough = counts >= SNAP_MIN_PIXELS
    moved = centres.copy()
    moved[enough] = sums[enough] / counts[enough, None]
    far = np.linalg.norm(moved - centres, axis=1) > max_move * diameter
    moved[far] = centres[far]
    whole = np.isfinite(lone[:, 0])
    whole[whole] = np.linalg.norm(lone[whole] - centres[whole], axis=1) <= max_move * diameter
    moved[whole] = lone[whole]
    return moved


def _lone_region_centroids(centres: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Per centre (N x 2): the centroid of its connected ``foreground`` region when no other
    centre is on that region, else NaN."""
    from scipy import ndimage as ndi

    regions, n_regions = ndi.label(foreground)
    own = regions[tuple(pixel_indices(centres, regions.shape).T)]
    alone = (own > 0) & (np.bincount(own, minlength=n_regions + 1)[own] == 1)
    found = np.full(centres.shape, np.nan)
    if alone.any():
        found[alone] = ndi.center_of_mass(foreground, regions, own[alone])
    return found


def pixel_indices(centres: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest pixel (N x 2 int, inside an image of ``shape``) of each centre (y, x)."""
    return np.clip(np.round(centres).astype(int), 0, np.array(shape[:2]) - 1).reshape(-1, 2)


def cell_support(foreground: np.ndarray, diameter: float) -> np.ndarray:
    """Pixels within a quarter of a cell ``diameter`` of the ``foreground`` (bool mask).

    A counter counts peaks and density only there: the network also answers faint specks,
    fibres and edges of the background, each a false cell that costs most in sparse images.
    """
    from scipy import ndimage as ndi

    if not foreground.any():
        return np.zeros(foreground.shape, bool)
    return ndi.distance_transform_edt(~foreground) <= SUPPORT_MARGIN * diameter
