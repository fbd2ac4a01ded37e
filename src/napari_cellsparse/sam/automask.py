"""Automatic masks: SAM's point-grid mask generator, same objects, less work.

The parameters, their defaults and the pipeline are those of
``segment_anything.SamAutomaticMaskGenerator`` (three masks per point, predicted-IoU and
stability filters, box NMS per crop, crop NMS, small-region clean-up); the building blocks
of ``segment_anything.utils.amg`` and torchvision's NMS are used as they are. What changes
is where the work goes (see ``benchmarks/sam_automask.py`` for the profile):

* The decoder's image-only work is done once per image (:class:`FastMaskDecoder`).
* IoU predictions come before masks: a point whose three masks all fail ``pred_iou_thresh``
  never runs the mask upscaling, and a failing mask is never upsampled.
* A surviving mask is upsampled only inside the window whose logits can exceed
  ``-stability_score_offset`` (:func:`upsample_window`); the stability score counts pixels in
  that window, which is exact, because every pixel outside it is below both thresholds.
* Masks stay as small windows: no full-image boolean stacks, no run-length round trips.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.images import to_rgb_uint8
from ..core.lazy import import_torch
from ..core.masks import PromptMask
from ..core.progress import Progress, check_cancel
from .upsample import upsample_window

__all__ = ["PRESETS", "AutoMask", "AutomaskParams", "AutomaskResult", "generate_masks"]


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

    def check(self) -> None:
        """Refuse values outside what the generator can use, saying which and why."""
        whole = {
            "points_per_side": (1, 256),
            "points_per_batch": (1, 4096),
            "crop_n_layers": (0, 4),
            "crop_n_points_downscale_factor": (1, 64),
            "min_mask_region_area": (0, 10**9),
        }
        for name, (lo, hi) in whole.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise BadInputError(f"{name} must be a whole number, got {value!r}.")
            if not lo <= value <= hi:
                raise BadInputError(f"{name} must be between {lo} and {hi}, got {value}.")
        fractions = {
            "pred_iou_thresh": (0.0, 1.0),
            "stability_score_thresh": (0.0, 1.0),
            "box_nms_thresh": (0.0, 1.0),
            "crop_nms_thresh": (0.0, 1.0),
            "crop_overlap_ratio": (0.0, 0.99),
            "stability_score_offset": (0.0, 100.0),
        }
        for name, (lo, hi) in fractions.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
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


@dataclass
class AutoMask(PromptMask):
    """One object of the generator: a window mask (``score`` is SAM's predicted IoU) with
    the reference's other fields."""

    stability_score: float
    point: tuple[float, float]  # x, y in image pixels
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1

    @property
    def predicted_iou(self) -> float:
        return self.score

    def box(self) -> tuple[int, int, int, int]:
        """``x0, y0, x1, y1`` with inclusive ends, as ``batched_mask_to_box`` (0s if empty)."""
        bbox = self.bbox()
        if bbox is None:
            return (0, 0, 0, 0)
        y0, x0, y1, x1 = bbox
        return (x0, y0, x1 - 1, y1 - 1)

    def record(self) -> dict[str, Any]:
        """The reference generator's record for this mask (without the segmentation)."""
        x0, y0, x1, y1 = self.box()
        cx0, cy0, cx1, cy1 = self.crop_box
        return {
            "area": self.area,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": self.predicted_iou,
            "point_coords": [list(self.point)],
            "stability_score": self.stability_score,
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        }


@dataclass
class AutomaskResult:
    """The objects of one image, in the reference generator's order."""

    masks: list[AutoMask]
    shape: tuple[int, int]
    params: AutomaskParams

    def __len__(self) -> int:
        return len(self.masks)

    def labels(self) -> np.ndarray:
        """One id per object (int32, 0 = none); see :meth:`labels_with_scores`."""
        return self.labels_with_scores()[0]

    def labels_with_scores(self) -> tuple[np.ndarray, dict[int, float]]:
        """One id per object (int32, 0 = none) and each id's predicted IoU; where objects
        overlap the higher score wins.

        Score is the predicted IoU. An object keeps only its largest connected piece of what
        stays visible, and one left with under half of its own area is dropped, so no
        fragments of covered objects remain. Ids are 1..n in the order of ``masks`` kept.
        """
        from scipy import ndimage as ndi

        out = np.zeros(self.shape, dtype=np.int32)
        order = sorted(range(len(self.masks)), key=lambda i: self.masks[i].predicted_iou)
        for i in order:  # lowest score first: higher scores paint over
            m = self.masks[i]
            out[m.slices][m.mask] = i + 1
        final = np.zeros(self.shape, dtype=np.int32)
        scores: dict[int, float] = {}
        next_id = 1
        for i, m in enumerate(self.masks):
            area = m.area
            if area == 0:
                continue
            visible = (out[m.slices] == i + 1) & m.mask
            pieces, n = ndi.label(visible)
            if n == 0:
                continue
            if n > 1:
                sizes = np.bincount(pieces.ravel())[1:]
                visible = pieces == int(np.argmax(sizes)) + 1
            if visible.sum() * 2 < area:
                continue
            final[m.slices][visible] = next_id
            scores[next_id] = m.predicted_iou
            next_id += 1
        return final, scores

    def records(self) -> list[dict[str, Any]]:
        return [m.record() for m in self.masks]


def _point_batches(points: np.ndarray, size: int) -> list[np.ndarray]:
    return [points[i : i + size] for i in range(0, len(points), size)]


def _nms(
    boxes: list[tuple[int, int, int, int]], scores: Sequence[float], thresh: float
) -> list[int]:
    """torchvision's NMS (as the reference uses it): kept indices, best score first."""
    torch = import_torch()
    from torchvision.ops.boxes import batched_nms

    if not boxes:
        return []
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    keep = batched_nms(b, s, torch.zeros(len(boxes), dtype=torch.int64), iou_threshold=thresh)
    return [int(i) for i in keep.tolist()]


def _decode_crop(
    prompter: Any,
    points: np.ndarray,
    params: AutomaskParams,
    crop_box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    cancel: threading.Event | None,
    done: int,
    total: int,
    multimask: bool = True,
) -> Generator[Progress, None, list[AutoMask]]:
    """Decode one crop's points (crop pixels, ``x, y``) into masks in crop coordinates."""
    torch = import_torch()
    from segment_anything.utils.amg import is_box_near_crop_edge

    emb, ctx = prompter._require_image()
    crop_h, crop_w = emb.original_size
    thresh = float(prompter.sam.mask_threshold)
    low = thresh - params.stability_score_offset
    high = thresh + params.stability_score_offset
    sub = max(1, int(prompter.batch_size))
    found: list[AutoMask] = []
    for batch in _point_batches(points, params.points_per_batch):
        check_cancel(cancel)
        for start in range(0, len(batch), sub):
            pts = batch[start : start + sub]
            coords = prompter._to_input_frame(pts)[:, None, :]
            labels = torch.ones((len(pts), 1), dtype=torch.int, device=coords.device)
            sparse = prompter.decoder.embed_prompts(coords, labels)
            queries, keys, iou = prompter.decoder.decode_scores(ctx, sparse, multimask)
            iou = iou.float().cpu().numpy()
            passing = iou > params.pred_iou_thresh if params.pred_iou_thresh > 0 else iou == iou
            rows = np.flatnonzero(passing.any(axis=1))
            if rows.size == 0:
                continue
            index = torch.as_tensor(rows, device=queries.device)
            logits = prompter.decoder.decode_masks(
                ctx, queries.index_select(0, index), keys.index_select(0, index), multimask
            )
            for k, row in enumerate(rows):
                for j in np.flatnonzero(passing[row]):
                    values, y0, x0 = upsample_window(
                        logits[k, j], emb.input_size, (crop_h, crop_w), threshold=low
                    )
                    union = int((values > low).sum())
                    inter = int((values > high).sum())
                    stability = inter / union if union else float("nan")
                    if params.stability_score_thresh > 0 and not (
                        stability >= params.stability_score_thresh
                    ):
                        continue
                    mask = values > thresh
                    found.append(
                        AutoMask(
                            mask,
                            y0,
                            x0,
                            float(iou[row, j]),
                            (crop_h, crop_w),
                            stability,
                            (float(pts[row, 0]), float(pts[row, 1])),
                            crop_box,
                        )
                    )
        done += len(batch)
        yield Progress(done, total, f"Decoding points ({done}/{total})")
    if not found:
        return []
    boxes = torch.as_tensor(np.asarray([m.box() for m in found], dtype=np.float32))
    near = is_box_near_crop_edge(  # takes boxes in the crop's frame, as upstream
        boxes,
        list(crop_box),
        [0, 0, image_size[1], image_size[0]],
    )
    found = [m for m, bad in zip(found, near.tolist(), strict=True) if not bad]
    keep = _nms([m.box() for m in found], [m.predicted_iou for m in found], params.box_nms_thresh)
    return [found[i] for i in keep]


def _clean_small_regions(masks: list[AutoMask], params: AutomaskParams) -> list[AutoMask]:
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
    keep = _nms(
        [m.box() for m in cleaned], unchanged, max(params.box_nms_thresh, params.crop_nms_thresh)
    )
    return [cleaned[i] for i in keep]


def generate_masks(
    prompter: Any,
    image: np.ndarray,
    params: AutomaskParams | Mapping[str, Any] | None = None,
    channels: Sequence[int] | None = None,
    cancel: threading.Event | None = None,
    multimask: bool = True,
) -> Generator[Progress, None, AutomaskResult]:
    """Every object SAM finds from a grid of points on ``image`` (YX or YXC).

    ``multimask=False`` decodes SAM's single-mask output (one mask per point) instead of
    the reference generator's three.

    A progress generator (drain it with :func:`~napari_cellsparse.core.progress.run_sync`):
    embeddings first (the whole image's is cached and reused), then one step per batch of
    ``points_per_batch`` points; ``cancel`` is checked before every batch.
    """
    from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    if params is None:
        params = AutomaskParams()
    elif not isinstance(params, AutomaskParams):
        params = AutomaskParams.from_dict(params)
    params.check()
    rgb = to_rgb_uint8(image, channels)
    shape = rgb.shape[:2]
    crop_boxes, layers = generate_crop_boxes(shape, params.crop_n_layers, params.crop_overlap_ratio)
    grids = build_all_layer_point_grids(
        params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
    )
    total = sum(len(grids[layer]) for layer in layers)
    done = 0
    masks: list[AutoMask] = []
    whole = None
    for crop_box, layer in zip(crop_boxes, layers, strict=True):
        check_cancel(cancel)
        x0, y0, x1, y1 = (int(v) for v in crop_box)
        yield Progress(done, total, f"Image embedding of crop {x0},{y0}-{x1},{y1}")
        if (x0, y0, x1, y1) == (0, 0, shape[1], shape[0]):
            # The whole image: the same embedding (and cache entry) as box prompting uses.
            whole = yield from prompter.set_image(image, channels)
        else:
            yield from prompter.set_image(rgb[y0:y1, x0:x1])
        points = grids[layer] * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
        found = yield from _decode_crop(
            prompter, points, params, (x0, y0, x1, y1), shape, cancel, done, total, multimask
        )
        done += len(points)
        for m in found:
            point = (m.point[0] + x0, m.point[1] + y0)
            masks.append(replace(m, y0=m.y0 + y0, x0=m.x0 + x0, shape=shape, point=point))
    if whole is not None:
        prompter.use_embedding(whole)
    if len(crop_boxes) > 1 and masks:
        # Prefer masks from smaller crops, as the reference does.
        scores = [
            1.0 / max((m.crop_box[2] - m.crop_box[0]) * (m.crop_box[3] - m.crop_box[1]), 1)
            for m in masks
        ]
        keep = _nms([m.box() for m in masks], scores, params.crop_nms_thresh)
        masks = [masks[i] for i in keep]
    if params.min_mask_region_area > 0 and masks:
        masks = _clean_small_regions(masks, params)
    return AutomaskResult(masks, shape, params)
