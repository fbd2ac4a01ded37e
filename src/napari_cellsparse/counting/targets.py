"""What a counter learns from: density targets, the trusted-pixel mask and the cell scale.

A cell centre becomes a Gaussian that integrates to 1 over the image, so a density map sums to
the number of cells. With sparse points most cells have no point, so the loss may only look
where the annotation is trustworthy: painted background, a tight disc (about one cell radius)
around each given point, and regions the user marked as fully annotated. Everything else is
left out of the loss, never treated as "no cell".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import BadInputError
from ..models.scale import cell_signal, otsu_foreground
from .centres import pixel_indices

__all__ = [
    "check_points",
    "density_targets",
    "heatmap_targets",
    "points_diameter",
    "points_polarity",
    "probable_background",
    "sigma_for",
    "spacing_diameter",
    "trusted_mask",
]

MIN_SIGMA, MAX_SIGMA = 1.0, 8.0
MAX_SCALE_POINTS = 200  # points read by points_diameter (the median settles long before)


def check_points(points: np.ndarray | Sequence, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Points as an (N, 2) float array of (y, x) inside an image of ``shape`` (clear errors)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2), np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise BadInputError(
            f"The points of {what} must be an N x 2 array of (y, x), got {pts.shape}."
        )
    pts = pts[:, -2:]
    if not np.isfinite(pts).all():
        raise BadInputError(f"The points of {what} contain NaN or infinite coordinates.")
    h, w = shape[:2]
    outside = (
        (pts[:, 0] < -0.5) | (pts[:, 0] > h - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > w - 0.5)
    )
    if outside.any():
        first = pts[np.flatnonzero(outside)[0]]
        raise BadInputError(
            f"{int(outside.sum())} point(s) of {what} lie outside the {h} x {w} image "
            f"(e.g. y={first[0]:.1f}, x={first[1]:.1f}); points are (y, x) in pixels."
        )
    return pts


def heatmap_targets(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Sum of unit-peak Gaussians (float32, ``shape``) at ``points``: value 1 at each centre.

    Each Gaussian integrates to ``2 pi sigma^2`` over the plane; :func:`density_targets` divides
    by its sum inside the image so that cells cut by the border still count as one.
    """
    out = np.zeros(shape, np.float32)
    radius = int(np.ceil(4 * sigma))
    for y, x in np.asarray(points, np.float64).reshape(-1, 2):
        y0, y1 = max(int(y) - radius, 0), min(int(y) + radius + 2, shape[0])
        x0, x1 = max(int(x) - radius, 0), min(int(x) + radius + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-((np.arange(y0, y1) - y) ** 2) / (2 * sigma**2))
        gx = np.exp(-((np.arange(x0, x1) - x) ** 2) / (2 * sigma**2))
        out[y0:y1, x0:x1] += np.outer(gy, gx).astype(np.float32)
    return out


def density_targets(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Density map (float32, ``shape``) whose Gaussians each integrate to exactly 1 in the image."""
    out = np.zeros(shape, np.float32)
    for point in np.asarray(points, np.float64).reshape(-1, 2):
        blob = heatmap_targets(point[None], shape, sigma)
        total = float(blob.sum())
        if total > 0:
            out += blob / np.float32(total)
    return out


def trusted_mask(
    points: np.ndarray,
    shape: tuple[int, int],
    radius: float,
    background: np.ndarray | None = None,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels whose target is known: painted ``background``, discs of ``radius`` around the
    points and fully annotated ``regions`` (bool, ``shape``)."""
    mask = np.zeros(shape, bool)
    for extra in (background, regions):
        if extra is not None:
            mask |= np.asarray(extra, bool)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts):
        seeds = np.ones(shape, bool)
        idx = pixel_indices(pts, shape)
        seeds[idx[:, 0], idx[:, 1]] = False
        mask |= ndi.distance_transform_edt(seeds) <= radius
    return mask


def probable_background(
    image: np.ndarray, polarity: float, points: np.ndarray, radius: float, margin: float
) -> np.ndarray:
    """Pixels that are very likely background (bool): outside the image's Otsu foreground
    grown by ``margin`` pixels, and outside the discs of ``radius`` around the given points.

    A prior read from the image alone: no cell centre lies in the dark (for bright cells)
    space between cells. It gives the loss the near-cell background that painted background
    rarely reaches, where a network otherwise invents halos around every cell.
    """
    foreground = otsu_foreground(image, polarity, 1.0)
    if foreground is None:
        return np.zeros(image.shape[:2], bool)
    near = ndi.distance_transform_edt(~foreground) <= margin
    return ~near & ~trusted_mask(points, foreground.shape, radius)


def points_polarity(normalized: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> float:
    """+1 when the cells (read at the given points) are brighter than the image's median,
    else -1 (dark nuclei in brightfield)."""
    inside, overall = [], []
    for img, pts in zip(normalized, points, strict=True):
        gray = img.mean(-1)
        idx = np.round(pts).astype(int)
        if len(idx):
            inside.append(gray[idx[:, 0], idx[:, 1]])
            overall.append(np.median(gray))
    if not inside:
        return 1.0
    return 1.0 if np.median(np.concatenate(inside)) >= np.median(overall) else -1.0


def spacing_diameter(points: np.ndarray) -> float | None:
    """Half the median distance between neighbouring points: a rough diameter when the
    image itself gives none (sparse points are further apart than touching cells)."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return None
    dist, _ = cKDTree(points).query(points, k=2)
    return float(np.median(dist[:, 1])) / 2.0


def points_diameter(image: np.ndarray, points: np.ndarray, polarity: float) -> float | None:
    """Cell diameter (pixels) read at the given centres: the scale at which the
    scale-normalised Laplacian of Gaussian responds most, in the median over the points
    (a disc of diameter d answers most at sigma = d / (2 sqrt 2)). None with under 3 points.

    Read where the user says cells are, it does not depend on how the image thresholds
    (texture in histology breaks the foreground estimate into fragments).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return None
    gray = cell_signal(image, polarity)
    idx = pixel_indices(pts[:MAX_SCALE_POINTS], gray.shape)
    logs = np.arange(1.0, 5.01, 0.25)  # log2 sigma: diameters of about 6 to 90 px
    reach = int(np.ceil(4.0 * 2.0 ** logs[-1]))
    padded = np.pad(gray, reach, mode="reflect" if min(gray.shape) > reach else "symmetric")
    response = np.zeros(len(logs))
    for i, k in enumerate(logs):
        sigma = 2.0**k
        r = int(np.ceil(4.0 * sigma))
        delta = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
        delta[r, r] = 1.0
        kernel = -(sigma**2) * ndi.gaussian_laplace(delta, sigma, mode="constant")
        values = [
            float(
                (
                    padded[y + reach - r : y + reach + r + 1, x + reach - r : x + reach + r + 1]
                    * kernel
                ).sum()
            )
            for y, x in idx
        ]
        response[i] = np.median(values)
    best = int(np.argmax(response))
    k = logs[best]
    if 0 < best < len(logs) - 1:  # parabola through the peak and its neighbours
        left, mid, right = response[best - 1 : best + 2]
        curve = left - 2.0 * mid + right
        if curve < 0:
            k += 0.25 * float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))
    return float(2.0 * np.sqrt(2.0) * 2.0**k)


def sigma_for(diameter: float) -> float:
    """Gaussian sigma for cells of ``diameter`` px: a third of the radius, kept in a sane range."""
    return float(np.clip(diameter / 6.0, MIN_SIGMA, MAX_SIGMA))
