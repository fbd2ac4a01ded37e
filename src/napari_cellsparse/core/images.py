"""Image checks and the one percentile normalisation every model input goes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BadInputError

__all__ = [
    "as_list",
    "as_yxc",
    "guess_axes",
    "intensity_ranges",
    "is_flat",
    "normalize",
    "normalize_percentile",
    "numeric_image",
    "percentile_ranges",
    "sample_grid",
    "stretch",
    "to_rgb_uint8",
]

MAX_CHANNELS = 4


def guess_axes(shape: Sequence[int], n_channels: int | None = None) -> str:
    """The axes of an image whose shape leaves no doubt, or a clear error.

    Without ``n_channels`` (an image file): YX, or up to :data:`MAX_CHANNELS` channels last
    (YXC) or first (CYX) beside larger spatial axes. With the channel count of the model that
    will read it: channels must match it, and a single-channel model also reads a stack (ZYX)
    and a multi-channel one a stack of channels-last planes (ZYXC).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and n_channels is None:
        if shape[-1] <= MAX_CHANNELS < min(shape[:2]):
            return "YXC"
        if shape[0] <= MAX_CHANNELS < min(shape[1:]):
            return "CYX"
    elif len(shape) == 3:
        if shape[-1] == n_channels and shape[-1] <= MAX_CHANNELS and n_channels > 1:
            return "YXC"
        if shape[0] == n_channels > 1 and shape[-1] > MAX_CHANNELS:
            return "CYX"
        if n_channels == 1 and shape[-1] > MAX_CHANNELS:
            return "ZYX"
    if len(shape) == 4 and n_channels is not None and n_channels > 1 and shape[-1] == n_channels:
        return "ZYXC"
    if n_channels is None:
        raise BadInputError(
            f"Cannot tell the axes of an image of shape {shape}: expected a 2D image (YX) "
            f"or one with up to {MAX_CHANNELS} channels (YXC or CYX)."
        )
    raise BadInputError(
        f"Cannot tell the axes of an image of shape {shape} for a {n_channels}-channel "
        "model; pass axes, e.g. axes='ZYX' for a stack or axes='YXC' for channels last."
    )


def normalize_percentile(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, axis: tuple[int, ...] | None = None
) -> np.ndarray:
    """Scale ``image`` so that its ``low``/``high`` percentiles map to 0/1 (float32, unclipped).

    ``axis`` selects the axes the percentiles are taken over (None: all of them); a constant
    image maps to zeros rather than dividing by zero.
    """
    data = np.asarray(image, dtype=np.float32)
    lo = np.percentile(data, low, axis=axis, keepdims=True).astype(np.float32)
    hi = np.percentile(data, high, axis=axis, keepdims=True).astype(np.float32)
    return stretch(data, lo, hi)


def stretch(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(data - lo) / (hi - lo)`` as float32 (unclipped); a flat range divides by 1."""
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    scale = np.where(hi - lo > 1e-12, hi - lo, np.float32(1.0))
    return (np.asarray(data, dtype=np.float32) - lo) / scale


def sample_grid(image: Any, max_pixels: int = 4_000_000) -> np.ndarray:
    """Every k-th row and column of a YX(C) image (k = 1 up to ``max_pixels`` pixels).

    The intensity statistics of a large image read once from a lazy array (dask, zarr, a
    memory-mapped TIFF) without holding all of it as floats.
    """
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    return np.asarray(image[::step, ::step])


def numeric_image(image: Any) -> np.ndarray:
    """``image`` as an integer or floating-point array (a mask becomes uint8)."""
    data = np.asarray(image)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise BadInputError(f"Images must be integer or floating point, not {data.dtype}.")
    return data


def as_yxc(image: np.ndarray, channels: Sequence[int] | None = None) -> np.ndarray:
    """Return a 2D image as YXC (C in 1..4), checking shape, dtype and values.

    ``image`` is YX or YXC (channels last, at most 4). ``channels`` picks some of them.
    Stacks must be sliced by the caller (the viewer's current slice, or per slice).
    """
    data = numeric_image(image)
    if data.ndim == 2:
        data = data[..., None]
    elif data.ndim != 3 or data.shape[-1] > MAX_CHANNELS:
        raise BadInputError(
            f"Expected a 2D image (YX) or a 2D image with up to {MAX_CHANNELS} channels last "
            f"(YXC); got shape {data.shape}. For a stack, pick one slice (or use axes='ZYX')."
        )
    if min(data.shape[:2]) < 2:
        raise BadInputError(f"The image is too small to segment: shape {data.shape}.")
    if channels is not None:
        chosen = list(channels)
        bad = [c for c in chosen if not 0 <= c < data.shape[-1]]
        if not chosen or bad:
            raise BadInputError(
                f"Channels {chosen} do not exist; the image has {data.shape[-1]} channel(s)."
            )
        data = data[..., chosen]
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise BadInputError("The image contains NaN or infinite values.")
    return data


def _sam_channels(data: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    """Of four channels SAM uses the first three unless ``channels`` picked them."""
    if data.shape[-1] == MAX_CHANNELS and channels is None:
        return data[..., :3]
    return data


def intensity_ranges(
    image: Any, channels: Sequence[int] | None = None, max_pixels: int = 4_000_000
) -> np.ndarray | None:
    """Per-channel 1st and 99.8th percentiles (2 x C) that :func:`to_rgb_uint8` stretches.

    For an image read tile by tile, so that every tile is stretched the same way. Images
    above ``max_pixels`` are sampled on a regular grid (every k-th row and column), which
    reads a lazy array (dask, zarr) once without holding all of it as floats. None for an
    RGB uint8 picture, which is used as it is.
    """
    data = _sam_channels(as_yxc(sample_grid(image, max_pixels), channels), channels)
    if data.dtype == np.uint8 and data.shape[-1] == 3:
        return None
    return percentile_ranges(data)


def percentile_ranges(data: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Per-channel ``low`` / ``high`` percentiles (2 x C, float32) of a YXC image: the
    ranges :func:`stretch` maps to 0 / 1, as :func:`normalize_percentile` would."""
    values = np.asarray(data).reshape(-1, data.shape[-1]).astype(np.float32)
    return np.percentile(values, [low, high], axis=0).astype(np.float32)


def to_rgb_uint8(
    image: np.ndarray, channels: Sequence[int] | None = None, ranges: np.ndarray | None = None
) -> np.ndarray:
    """Turn any supported 2D image into the HxWx3 uint8 RGB that SAM expects.

    One channel is repeated three times; two channels fill red and green; three are used as
    they are; of four, the first three are used unless ``channels`` says otherwise. An RGB
    uint8 picture is kept as it is (its colours mean something); anything else is stretched
    per channel between its 1st and 99.8th percentiles, or between ``ranges`` (from
    :func:`intensity_ranges` of the whole image) for a tile of a large one.
    """
    data = _sam_channels(as_yxc(image, channels), channels)
    if data.dtype == np.uint8 and data.shape[-1] == 3:
        return np.ascontiguousarray(data)
    if ranges is None:
        scaled = normalize_percentile(data, axis=(0, 1))
    else:
        scaled = stretch(data, *np.asarray(ranges, dtype=np.float32))
    rgb = np.zeros((*data.shape[:2], 3), dtype=np.uint8)
    converted = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if converted.shape[-1] == 1:
        rgb[:] = converted
    else:
        rgb[..., : converted.shape[-1]] = converted
    return rgb


def is_flat(image: np.ndarray) -> bool:
    """True for an image with nothing to segment: empty, all zero or one constant value."""
    return not image.any() or float(image.max()) == float(image.min())


def normalize(image: np.ndarray) -> np.ndarray:
    """The one normalisation of model inputs: per channel, 1st/99.8th percentile → 0/1."""
    return normalize_percentile(image, axis=(0, 1))


def as_list(arrays: np.ndarray | Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """One array or a sequence of arrays → a non-empty list of arrays."""
    if not isinstance(arrays, (list, tuple)):
        return [np.asarray(arrays)]
    items = [np.asarray(a) for a in arrays]
    if not items:
        raise BadInputError(f"No {what} given.")
    return items
