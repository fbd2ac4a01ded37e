"""Request bodies of the samapi and cellsparse-api web APIs (same field names and defaults).

Field names, types and defaults follow samapi's ``SAMBody`` / ``SAMAutoMaskBody`` /
``SAMWeightsBody`` and cellsparse-api's ``CellsparseBody`` / ``CellsparseResetBody`` so that
their QuPath extensions' requests validate unchanged; unknown fields are ignored, as there.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..sam.automask import AutomaskParams

__all__ = [
    "OUTPUT_TYPES",
    "CellposeBody",
    "CellsparseBody",
    "CellsparseResetBody",
    "SAMAutoMaskBody",
    "SAMBody",
    "SAMWeightsBody",
    "StarDistBody",
]

_AUTO = AutomaskParams()
# samapi's automask output types (its MobileSAM generator's spellings; "Single Mask", the
# server's own default, is accepted as "Single mask").
OUTPUT_TYPES = (
    "Single mask",
    "Multi-mask (all)",
    "Multi-mask (largest)",
    "Multi-mask (smallest)",
    "Multi-mask (best quality)",
)


class SAMBody(BaseModel):
    """``POST /sam/``: one prompt (a box, points, or both) on one image."""

    type: str = "vit_h"
    bbox: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1
    point_coords: list[tuple[int, int]] | None = None  # x, y
    point_labels: list[int] | None = None  # 1 object, 0 not the object
    b64img: str
    b64mask: str | None = None
    multimask_output: bool = False
    checkpoint_url: str | None = None


class SAMAutoMaskBody(BaseModel):
    """``POST /sam/automask/``: SamAutomaticMaskGenerator's parameters plus samapi's two."""

    type: str = "vit_h"
    b64img: str
    points_per_side: int = _AUTO.points_per_side
    points_per_batch: int = _AUTO.points_per_batch
    pred_iou_thresh: float = _AUTO.pred_iou_thresh
    stability_score_thresh: float = _AUTO.stability_score_thresh
    stability_score_offset: float = _AUTO.stability_score_offset
    box_nms_thresh: float = _AUTO.box_nms_thresh
    crop_n_layers: int = _AUTO.crop_n_layers
    crop_nms_thresh: float = _AUTO.crop_nms_thresh
    crop_overlap_ratio: float = _AUTO.crop_overlap_ratio
    crop_n_points_downscale_factor: int = _AUTO.crop_n_points_downscale_factor
    min_mask_region_area: int = _AUTO.min_mask_region_area
    output_type: str = "Single Mask"
    include_image_edge: bool = False
    checkpoint_url: str | None = None


class SAMWeightsBody(BaseModel):
    """``POST /sam/weights/``: register (download) a checkpoint under a name."""

    type: str
    name: str
    url: str


class CellsparseBody(BaseModel):
    """``POST /stardist/``, ``/cellpose/``, ``/elephant/``: train and/or segment.

    ``b64lbl``: 0 = not annotated, 1 = background, 2+ = one id per cell.
    """

    modelname: str
    b64img: str
    b64lbl: str | None = None
    train: bool = False
    eval: bool = False
    epochs: int = Field(1, ge=1)
    trainpatch: int = Field(224, ge=16)
    batchsize: int = Field(8, ge=1)
    steps: int = Field(200, ge=1)
    lr: float = Field(0.001, gt=0)
    minarea: float = Field(10.0, ge=0)
    simplify_tol: float | None = None


class StarDistBody(CellsparseBody):
    n_channels_in: int = 1


class CellposeBody(CellsparseBody):
    chan1: int = 0
    chan2: int = 0


class CellsparseResetBody(BaseModel):
    """``POST /…/reset/``: forget a model (``pretrained`` other than "random" needs a
    download, which this offline-first server refuses with a message)."""

    modelname: str
    pretrained: str | None = None
