"""The candidate masks an automask set-up keeps, and the filters ``generate`` applies to them.

A candidate is one decoded mask (three per point with ``multimask``): its full-resolution
mask inside its window, bit-packed (one bit a pixel), with its box, predicted IoU, stability
score and point. Filtering them is the reference generator's pipeline after the decoder:
predicted-IoU and stability thresholds, box NMS per crop, NMS across crops preferring
smaller crops, and the small-region clean-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..core.lazy import import_torch
from .automask_params import AutomaskParams
from .automask_result import AutoMask, nms

__all__ = ["Candidate", "CropCandidates", "clean_small_regions", "merge_crops"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Candidate:
    """One decoded mask in its crop's frame; ``box`` is ``x0, y0, x1, y1`` (ends inclusive,
    0s when empty), as ``batched_mask_to_box``."""

    bits: np.ndarray  # np.packbits of the window's mask
    window: tuple[int, int]  # the window's height and width
    y0: int
    x0: int
    iou: float
    stability: float
    point: tuple[float, float]  # x, y
    box: Box

    @classmethod
    def of(
        cls,
        mask: np.ndarray,
        y0: int,
        x0: int,
        iou: float,
        stability: float,
        point: tuple[float, float],
    ) -> Candidate:
        """Pack ``mask`` (the window at ``y0, x0``) with its scores."""
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size:
            cols = np.flatnonzero(mask.any(axis=0))
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1]))
        else:
            box = (0, 0, 0, 0)
        bits = np.packbits(mask, axis=None)
        return cls(bits, mask.shape, y0, x0, iou, stability, point, box)

    def mask(self) -> np.ndarray:
        h, w = self.window
        return np.unpackbits(self.bits, count=h * w).reshape(h, w).astype(bool)

    def automask(self, crop_box: Box, shape: tuple[int, int]) -> AutoMask:
        """This candidate as an object of the whole image (``shape``)."""
        cx0, cy0 = crop_box[0], crop_box[1]
        point = (self.point[0] + cx0, self.point[1] + cy0)
        return AutoMask(
            self.mask(),
            self.y0 + cy0,
            self.x0 + cx0,
            self.iou,
            shape,
            self.stability,
            point,
            crop_box,
        )


@dataclass(frozen=True)
class CropCandidates:
    """The candidates of one crop, in decoding order, with their scores as arrays."""

    box: Box
    shape: tuple[int, int]  # the whole image's
    candidates: tuple[Candidate, ...]
    iou: np.ndarray
    stability: np.ndarray

    @classmethod
    def of(
        cls, crop_box: Box, shape: tuple[int, int], found: Sequence[Candidate]
    ) -> CropCandidates:
        """Keep ``found`` except masks touching the crop's edges inside the image (as the
        reference's ``is_box_near_crop_edge``; it depends on no threshold)."""
        from segment_anything.utils.amg import is_box_near_crop_edge

        if found:
            torch = import_torch()
            boxes = torch.as_tensor(np.asarray([c.box for c in found], dtype=np.float32))
            near = is_box_near_crop_edge(boxes, list(crop_box), [0, 0, shape[1], shape[0]])
            found = [c for c, bad in zip(found, near.tolist(), strict=True) if not bad]
        iou = np.asarray([c.iou for c in found], dtype=np.float64)
        stability = np.asarray([c.stability for c in found], dtype=np.float64)
        return cls(crop_box, shape, tuple(found), iou, stability)

    @property
    def nbytes(self) -> int:
        return sum(c.bits.nbytes for c in self.candidates) + self.iou.nbytes * 2

    def select(self, params: AutomaskParams) -> list[AutoMask]:
        """The candidates passing ``params``' thresholds, after box NMS, best first."""
        passing = np.ones(len(self.candidates), dtype=bool)
        if params.pred_iou_thresh > 0:
            passing &= self.iou > params.pred_iou_thresh
        if params.stability_score_thresh > 0:
            passing &= self.stability >= params.stability_score_thresh
        kept = [self.candidates[i] for i in np.flatnonzero(passing)]
        order = nms([c.box for c in kept], [c.iou for c in kept], params.box_nms_thresh)
        return [kept[i].automask(self.box, self.shape) for i in order]


def merge_crops(masks: list[AutoMask], params: AutomaskParams) -> list[AutoMask]:
    """NMS across crops, preferring masks from smaller crops, as the reference does."""
    scores = [
        1.0 / max((m.crop_box[2] - m.crop_box[0]) * (m.crop_box[3] - m.crop_box[1]), 1)
        for m in masks
    ]
    keep = nms([m.box() for m in masks], scores, params.crop_nms_thresh)
    return [masks[i] for i in keep]


def clean_small_regions(masks: list[AutoMask], params: AutomaskParams) -> list[AutoMask]:
    """The reference's ``postprocess_small_regions`` on windows (padded where not at an edge)."""
    from segment_anything.utils.amg import remove_small_regions

    area = params.min_mask_region_area
    cleaned: list[AutoMask] = []
    unchanged: list[float] = []
    for m in masks:
        h, w = m.mask.shape
        shape_h, shape_w = m.shape
        # One False pixel around the window, except along the image's own border, so that
        # background reaching the window edge stays connected to the rest of the image.
        top, left = int(m.y0 > 0), int(m.x0 > 0)
        bottom, right = int(m.y0 + h < shape_h), int(m.x0 + w < shape_w)
        padded = np.pad(m.mask, ((top, bottom), (left, right)))
        padded, holes = remove_small_regions(padded, area, mode="holes")
        padded, islands = remove_small_regions(padded, area, mode="islands")
        inner = padded[top : top + h, left : left + w]
        cleaned.append(replace(m, mask=inner))
        unchanged.append(float(not (holes or islands)))
    keep = nms(
        [m.box() for m in cleaned], unchanged, max(params.box_nms_thresh, params.crop_nms_thresh)
    )
    return [cleaned[i] for i in keep]
