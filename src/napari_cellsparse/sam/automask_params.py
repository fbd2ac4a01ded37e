"""The automatic mask generator's parameters: names, defaults, bounds and presets.

The names, defaults and meaning are ``segment_anything.SamAutomaticMaskGenerator``'s. The
bounds live here once: :meth:`AutomaskParams.check` refuses values outside them, and the
SAM annotator's spin boxes take their ranges from them. The parameters fall in two groups:
:data:`SETUP_FIELDS` decide which points are decoded (a change decodes again), the
:data:`THRESHOLD_FIELDS` only filter decoded candidates (a change re-filters, see
:class:`~napari_cellsparse.sam.automask.AutomaskGenerator`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.limits import Bound

__all__ = [
    "AUTOMASK_BOUNDS",
    "PRESETS",
    "SETUP_FIELDS",
    "THRESHOLD_FIELDS",
    "AutomaskParams",
]

MAX_POINTS_PER_SIDE = 256  # 65,536 points per crop: minutes of decoding on a GPU
MAX_POINTS_PER_BATCH = 4096
MAX_CROP_LAYERS = 4  # 4 ** 4 = 256 crops, each embedded
MAX_POINTS_DOWNSCALE = 64
MAX_REGION_AREA = 10**9  # px; fits a Qt spin box (int32)
MAX_STABILITY_OFFSET = 100.0  # logits; SAM's logits stay within about +-30
MAX_CROP_OVERLAP = 0.99  # at 1.0 every crop is the whole image

# Every parameter's allowed range (``integer``: whole numbers only), checked in this order.
AUTOMASK_BOUNDS: Mapping[str, Bound] = MappingProxyType(
    {
        "points_per_side": Bound(1, MAX_POINTS_PER_SIDE, integer=True),
        "points_per_batch": Bound(1, MAX_POINTS_PER_BATCH, integer=True),
        "crop_n_layers": Bound(0, MAX_CROP_LAYERS, integer=True),
        "crop_n_points_downscale_factor": Bound(1, MAX_POINTS_DOWNSCALE, integer=True),
        "min_mask_region_area": Bound(0, MAX_REGION_AREA, integer=True),
        "pred_iou_thresh": Bound(0.0, 1.0),
        "stability_score_thresh": Bound(0.0, 1.0),
        "box_nms_thresh": Bound(0.0, 1.0),
        "crop_nms_thresh": Bound(0.0, 1.0),
        "crop_overlap_ratio": Bound(0.0, MAX_CROP_OVERLAP),
        "stability_score_offset": Bound(0.0, MAX_STABILITY_OFFSET),
    }
)

# Filters applied after decoding: changing only these re-filters the decoded candidates.
THRESHOLD_FIELDS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_nms_thresh",
    "min_mask_region_area",
)
# What decides the decoded candidates (``points_per_batch`` only changes the batching).
SETUP_FIELDS = (
    "points_per_side",
    "stability_score_offset",
    "crop_n_layers",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
)


@dataclass(frozen=True)
class AutomaskParams:
    """``SamAutomaticMaskGenerator``'s parameters, same names, defaults and meaning."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AutomaskParams:
        """Parameters from a request body or settings; unknown keys are refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise BadInputError(
                f"Unknown automask parameter(s): {', '.join(unknown)}. "
                f"Known: {', '.join(sorted(names))}."
            )
        params = cls(**{k: v for k, v in values.items() if v is not None})
        params.check()
        return params

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def setup_key(self) -> tuple[Any, ...]:
        """The values that decide which candidates are decoded (:data:`SETUP_FIELDS`)."""
        return tuple(getattr(self, name) for name in SETUP_FIELDS)

    def check(self) -> None:
        """Refuse values outside :data:`AUTOMASK_BOUNDS`, saying which and why."""
        for name, bound in AUTOMASK_BOUNDS.items():
            value = getattr(self, name)
            lo, hi = bound.low, bound.high
            if bound.integer:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise BadInputError(f"{name} must be a whole number, got {value!r}.")
                lo, hi = int(lo), int(hi)
            elif isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise BadInputError(f"{name} must be a number, got {value!r}.")
            if not (np.isfinite(value) and lo <= value <= hi):
                raise BadInputError(f"{name} must be between {lo} and {hi}, got {value}.")
        if self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers < 1:
            raise BadInputError(
                "points_per_side is too small for the crop layers: the deepest layer would have "
                "no points (points_per_side / crop_n_points_downscale_factor ** crop_n_layers)."
            )


# Starting points, not tuned values: "SAM defaults" is segment-anything's own setting; the
# nuclei and cells presets drop tiny fragments (and, for cells, use fewer points).
PRESETS: dict[str, dict[str, Any]] = {
    "SAM defaults": {},
    "nuclei": {"min_mask_region_area": 20},
    "cells": {"points_per_side": 24, "min_mask_region_area": 100},
}
