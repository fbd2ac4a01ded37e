"""Request bodies of the samapi and cellsparse-api web APIs (same field names and defaults).

Field names, types and defaults follow samapi's ``SAMBody`` / ``SAMAutoMaskBody`` /
``SAMWeightsBody`` and cellsparse-api's ``CellsparseBody`` / ``CellsparseResetBody`` so that
their QuPath extensions' requests validate unchanged; unknown fields are ignored, as there.

Every number is bounded (the named limits below, sized for a laptop) and finite: NaN and
Infinity, which Python's JSON reader accepts, are refused like any value out of range, as a
422 naming the field. Automask's parameters are bounded by
:meth:`~napari_cellsparse.sam.automask.AutomaskParams.check` (a 400 naming the field), the
one place that knows their ranges.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..sam.automask import AutomaskParams
from .images import DEFAULT_MAX_PIXELS

__all__ = [
    "MAX_BATCHSIZE",
    "MAX_BATCH_PIXELS",
    "MAX_CHANNELS",
    "MAX_COORDINATE",
    "MAX_EPOCHS",
    "MAX_LR",
    "MAX_POINTS",
    "MAX_SIMPLIFY_TOL",
    "MAX_STEPS",
    "MAX_TOTAL_STEPS",
    "MAX_TRAINPATCH",
    "MIN_TRAINPATCH",
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

MAX_COORDINATE = 1_000_000  # px, either sign: a box or point beyond any image sent
MAX_POINTS = 10_000  # points in one prompt
MIN_TRAINPATCH, MAX_TRAINPATCH = 16, 1024  # px, the side of a training patch
MAX_BATCHSIZE = 256
MAX_BATCH_PIXELS = 2**24  # trainpatch**2 * batchsize: 16 patches of 1024**2, 256 of 128**2
MAX_EPOCHS = 1_000
MAX_STEPS = 100_000
MAX_TOTAL_STEPS = 100_000  # epochs * steps
MAX_LR = 1.0
MAX_SIMPLIFY_TOL = 1_000.0  # px
MAX_CHANNELS = 16

Coordinate = Annotated[int, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]


class _Body(BaseModel):
    """A request body: numbers must be finite."""

    model_config = ConfigDict(allow_inf_nan=False)


class SAMBody(_Body):
    """``POST /sam/``: one prompt (a box, points, or both) on one image."""

    type: str = "vit_h"
    bbox: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = None  # x0 y0 x1 y1
    point_coords: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, max_length=MAX_POINTS
    )  # x, y
    point_labels: list[Annotated[int, Field(ge=0, le=1)]] | None = Field(
        None, max_length=MAX_POINTS
    )  # 1 object, 0 not the object
    b64img: str
    b64mask: str | None = None
    multimask_output: bool = False
    checkpoint_url: str | None = None


class SAMAutoMaskBody(_Body):
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


class CellsparseBody(_Body):
    """``POST /stardist/``, ``/cellpose/``, ``/elephant/``: train and/or segment.

    ``b64lbl``: 0 = not annotated, 1 = background, 2+ = one id per cell.
    """

    modelname: str
    b64img: str
    b64lbl: str | None = None
    train: bool = False
    eval: bool = False
    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    trainpatch: int = Field(224, ge=MIN_TRAINPATCH, le=MAX_TRAINPATCH)
    batchsize: int = Field(8, ge=1, le=MAX_BATCHSIZE)
    steps: int = Field(200, ge=1, le=MAX_STEPS)
    lr: float = Field(0.001, gt=0, le=MAX_LR)
    minarea: float = Field(10.0, ge=0, le=DEFAULT_MAX_PIXELS)
    simplify_tol: float | None = Field(None, ge=0, le=MAX_SIMPLIFY_TOL)

    @model_validator(mode="after")
    def _fits_a_laptop(self) -> CellsparseBody:
        """Products of fields: the memory of one batch and the length of the training."""
        if self.trainpatch**2 * self.batchsize > MAX_BATCH_PIXELS:
            raise ValueError(
                f"trainpatch**2 * batchsize ({self.trainpatch}**2 * {self.batchsize}) must be "
                f"at most {MAX_BATCH_PIXELS} pixels; use a smaller trainpatch or batchsize"
            )
        if self.epochs * self.steps > MAX_TOTAL_STEPS:
            raise ValueError(
                f"epochs * steps ({self.epochs} * {self.steps}) must be at most {MAX_TOTAL_STEPS}"
            )
        return self


class StarDistBody(CellsparseBody):
    n_channels_in: int = Field(1, ge=1, le=MAX_CHANNELS)


class CellposeBody(CellsparseBody):
    chan1: int = Field(0, ge=0, le=MAX_CHANNELS)
    chan2: int = Field(0, ge=0, le=MAX_CHANNELS)


class CellsparseResetBody(_Body):
    """``POST /…/reset/``: forget a model (``pretrained`` other than "random" needs a
    download, which this offline-first server refuses with a message)."""

    modelname: str
    pretrained: str | None = None
