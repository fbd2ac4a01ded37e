"""Low-resolution SAM logits to a full-resolution mask, computed only where it can be True.

SAM upsamples 256x256 logits bilinearly to the padded 1024 frame, crops the padding and
resizes bilinearly to the image size, then thresholds at 0. Bilinear interpolation is a
convex combination of its source values, so an output pixel whose four sources are all
non-positive cannot be positive. We therefore find the rows and columns that reach a positive
low-resolution logit, and interpolate (both steps, separably, with SAM's source coordinates)
only inside that window. For an object, that is a small box instead of the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.lazy import import_torch

__all__ = ["upsample_logits", "upsample_window"]


def _axis(out_len: int, in_len: int, valid_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight of the upper neighbour, as ``F.interpolate`` (bilinear,
    ``align_corners=False``) computes them for ``in_len -> out_len``; indices are clamped to
    ``valid_in`` (the part of the source kept after cropping the padding)."""
    scale = np.float32(in_len) / np.float32(out_len)
    real = scale * (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    real = np.maximum(real, np.float32(0.0))
    i0 = np.minimum(real.astype(np.int64), valid_in - 1)
    i1 = np.minimum(i0 + 1, valid_in - 1)
    lam = (real - i0.astype(np.float32)).astype(np.float32)
    lam = np.where(i1 == i0, np.float32(0.0), lam).astype(np.float32)
    return i0, i1, lam


@dataclass(frozen=True)
class _Plan:
    """Index maps from output pixels to the 1024 frame and on to the 256 logits, per axis."""

    a0: np.ndarray
    a1: np.ndarray
    la: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    lb: np.ndarray


# Above this share of the image, a window is interpolated with torch's own full-frame kernels.
_DIRECT_FRACTION = 0.25

_PLANS: dict[tuple[int, int, int], _Plan] = {}


def _plan(out_len: int, valid: int, frame: int, low: int) -> _Plan:
    key = (out_len, valid, frame, low)
    plan = _PLANS.get(key)
    if plan is None:
        a0, a1, la = _axis(out_len, valid, valid)
        b0, b1, lb = _axis(frame, low, low)
        plan = _PLANS[key] = _Plan(a0, a1, la, b0, b1, lb)
    return plan


def _window(plan: _Plan, positive: np.ndarray) -> tuple[int, int] | None:
    """Output range whose low-resolution sources include a positive row/column."""
    reach = (
        positive[plan.b0[plan.a0]]
        | positive[plan.b1[plan.a0]]
        | positive[plan.b0[plan.a1]]
        | positive[plan.b1[plan.a1]]
    )
    hits = np.flatnonzero(reach)
    if hits.size == 0:
        return None
    return int(hits[0]), int(hits[-1]) + 1


def _resample(torch: Any, logits: Any, plan: _Plan, lo: int, hi: int, dim: int) -> Any:
    """Interpolate ``logits`` along ``dim`` for output positions ``lo:hi`` (two steps)."""
    a0, a1, la = plan.a0[lo:hi], plan.a1[lo:hi], plan.la[lo:hi]
    needed = np.unique(np.concatenate([a0, a1]))
    b0 = torch.from_numpy(plan.b0[needed])
    b1 = torch.from_numpy(plan.b1[needed])
    lb = torch.from_numpy(plan.lb[needed])
    shape = [1, 1]
    shape[dim] = -1
    lb = lb.view(shape)
    mid = logits.index_select(dim, b0) * (1 - lb) + logits.index_select(dim, b1) * lb
    pos0 = torch.from_numpy(np.searchsorted(needed, a0))
    pos1 = torch.from_numpy(np.searchsorted(needed, a1))
    lam = torch.from_numpy(la).view(shape)
    return mid.index_select(dim, pos0) * (1 - lam) + mid.index_select(dim, pos1) * lam


def upsample_logits(
    logits: Any,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    frame: int = 1024,
    threshold: float = 0.0,
) -> tuple[np.ndarray, int, int]:
    """Full-resolution mask of one 2D logit map, as ``(window_mask, y0, x0)``.

    The result equals SAM's ``postprocess_masks(...) > threshold`` inside the window (up to
    float rounding) and is False everywhere outside it.
    """
    values, y0, x0 = upsample_window(logits, input_size, original_size, frame, threshold)
    return values > threshold, y0, x0


def upsample_window(
    logits: Any,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    frame: int = 1024,
    threshold: float = 0.0,
) -> tuple[np.ndarray, int, int]:
    """Full-resolution logits of one 2D logit map inside the window that can exceed ``threshold``.

    Returns ``(values, y0, x0)`` (float32); every pixel outside the window is at most
    ``threshold`` in SAM's ``postprocess_masks`` output, so counts of pixels above any
    threshold at or above this one are exact from the window alone.
    """
    torch = import_torch()
    low = logits.detach().float().cpu()
    lh, lw = low.shape
    positive = (low > threshold).numpy()
    plan_y = _plan(original_size[0], input_size[0], frame, lh)
    plan_x = _plan(original_size[1], input_size[1], frame, lw)
    win_y = _window(plan_y, positive.any(axis=1))
    win_x = _window(plan_x, positive.any(axis=0))
    if win_y is None or win_x is None:
        return np.zeros((0, 0), dtype=np.float32), 0, 0
    (ya, yb), (xa, xb) = win_y, win_x
    if (yb - ya) * (xb - xa) > _DIRECT_FRACTION * original_size[0] * original_size[1]:
        # A mask covering much of the image: torch's own kernels are faster than gathers.
        f = torch.nn.functional
        up = f.interpolate(low[None, None], (frame, frame), mode="bilinear", align_corners=False)
        up = up[..., : input_size[0], : input_size[1]]
        up = f.interpolate(up, original_size, mode="bilinear", align_corners=False)[0, 0]
        return up[ya:yb, xa:xb].numpy(), ya, xa
    rows = _resample(torch, low, plan_y, *win_y, dim=0)
    full = _resample(torch, rows, plan_x, *win_x, dim=1)
    return full.numpy(), win_y[0], win_x[0]
