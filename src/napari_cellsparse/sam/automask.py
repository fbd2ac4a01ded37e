"""Automatic masks: SAM's point-grid mask generator, same objects, less work.

The parameters, their defaults and the pipeline are those of
``segment_anything.SamAutomaticMaskGenerator`` (three masks per point, predicted-IoU and
stability filters, box NMS per crop, crop NMS, small-region clean-up); the building blocks
of ``segment_anything.utils.amg`` and torchvision's NMS are used as they are. What changes
is where the work goes (see ``benchmarks/sam_automask.py`` for the profile):

* Set-up and generate are apart, as in micro-sam's ``AutomaticMaskGenerator``:
  :meth:`AutomaskGenerator.initialize` decodes the point grid once and keeps each candidate
  mask with its scores; :meth:`AutomaskGenerator.generate` applies the thresholds, NMS and
  clean-up, so trying other thresholds decodes nothing.
* The decoder's image-only work is done once per image (:class:`FastMaskDecoder`).
* IoU predictions come before masks: a point whose three masks all fail the kept floor of
  ``pred_iou_thresh`` never runs the mask upscaling, and a failing mask is never upsampled.
* A surviving mask is upsampled only inside the window whose logits can exceed
  ``-stability_score_offset`` (:func:`upsample_window`); the stability score counts pixels in
  that window, which is exact, because every pixel outside it is below both thresholds.
* Masks stay as small windows: no full-image boolean stacks, no run-length round trips.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.images import to_rgb_uint8
from ..core.lazy import import_torch
from ..core.progress import Progress, check_cancel
from .automask_candidates import Candidate, CropCandidates, clean_small_regions, merge_crops
from .automask_params import PRESETS, AutomaskParams
from .automask_result import AutoMask, AutomaskResult, nms
from .upsample import upsample_window

__all__ = [
    "PRESETS",
    "AutoMask",
    "AutomaskGenerator",
    "AutomaskParams",
    "AutomaskResult",
    "generate_masks",
    "nms",
]


def _as_params(params: AutomaskParams | Mapping[str, Any] | None) -> AutomaskParams:
    if params is None:
        params = AutomaskParams()
    elif not isinstance(params, AutomaskParams):
        params = AutomaskParams.from_dict(params)
    params.check()
    return params


@dataclass(frozen=True)
class _Floor:
    """The lowest thresholds a set-up keeps candidates for (0: keep every candidate)."""

    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0

    def iou_passes(self, iou: np.ndarray) -> np.ndarray:
        return iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else iou == iou

    def stability_passes(self, stability: float) -> bool:
        return self.stability_score_thresh <= 0 or stability >= self.stability_score_thresh


class AutomaskGenerator:
    """SAM's automatic masks in two steps: decode once, filter many times.

    ``initialize`` decodes the point grid of ``params`` (its :data:`SETUP_FIELDS
    <napari_cellsparse.sam.automask_params.SETUP_FIELDS>`) and keeps every candidate mask
    that passes the floor; ``generate`` filters those with any thresholds at or above the
    floor. ``keep_all=True`` keeps every candidate (floor 0: any thresholds later);
    ``keep_all=False`` keeps only what ``params``' own thresholds pass (one run, least
    work, as :func:`generate_masks`).

    What is kept per candidate: its full-resolution mask in its window, bit-packed, plus its
    box, predicted IoU, stability score and point (:class:`Candidate`). A 1024 x 1024 image
    with a 32 x 32 grid has at most 3 x 1024 = 3072 candidates; a mask covering the whole
    image costs 128 KiB (so 384 MiB is the ceiling if every candidate did), a 20 px nucleus
    with its window about 100 bytes; :attr:`nbytes` says what is held.
    """

    def __init__(
        self,
        prompter: Any,
        params: AutomaskParams | Mapping[str, Any] | None = None,
        multimask: bool = True,
        keep_all: bool = True,
    ) -> None:
        self.prompter = prompter
        self.params = _as_params(params)
        self.multimask = multimask
        self.floor = (
            _Floor()
            if keep_all
            else _Floor(self.params.pred_iou_thresh, self.params.stability_score_thresh)
        )
        self.crops: list[CropCandidates] = []
        self.shape: tuple[int, int] | None = None
        self.signature: str | None = None  # the whole image's embedding signature

    @property
    def is_initialized(self) -> bool:
        return self.shape is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept candidates (their packed masks and scores)."""
        return sum(crop.nbytes for crop in self.crops)

    def covers(self, params: AutomaskParams) -> bool:
        """Whether :meth:`generate` can answer ``params`` without decoding again."""
        return (
            self.is_initialized
            and params.setup_key() == self.params.setup_key()
            and params.pred_iou_thresh >= self.floor.pred_iou_thresh
            and params.stability_score_thresh >= self.floor.stability_score_thresh
        )

    def initialize(
        self,
        image: np.ndarray,
        channels: Sequence[int] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[Progress, None, None]:
        """Decode the point grid on ``image`` (YX or YXC) and keep the candidates.

        A progress generator: embeddings first (the whole image's is cached and reused), then
        one step per batch of ``points_per_batch`` points; ``cancel`` is checked before every
        batch.
        """
        from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes

        params, prompter = self.params, self.prompter
        self.crops, self.shape, self.signature = [], None, None
        rgb = to_rgb_uint8(image, channels)
        shape = rgb.shape[:2]
        boxes, layers = generate_crop_boxes(shape, params.crop_n_layers, params.crop_overlap_ratio)
        grids = build_all_layer_point_grids(
            params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
        )
        total = sum(len(grids[layer]) for layer in layers)
        done = 0
        whole = None
        crops = []
        for crop_box, layer in zip(boxes, layers, strict=True):
            check_cancel(cancel)
            x0, y0, x1, y1 = (int(v) for v in crop_box)
            yield Progress(done, total, f"Image embedding of crop {x0},{y0}-{x1},{y1}")
            if (x0, y0, x1, y1) == (0, 0, shape[1], shape[0]):
                # The whole image: the same embedding (and cache entry) as box prompting uses.
                whole = yield from prompter.set_image(image, channels)
            else:
                yield from prompter.set_image(rgb[y0:y1, x0:x1])
            points = grids[layer] * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
            found = yield from self._decode_crop(points, cancel, done, total)
            crops.append(CropCandidates.of((x0, y0, x1, y1), shape, found))
            done += len(points)
        if whole is not None:
            prompter.use_embedding(whole)
            self.signature = whole.signature
        self.crops, self.shape = crops, shape

    def _decode_crop(
        self,
        points: np.ndarray,
        cancel: threading.Event | None,
        done: int,
        total: int,
    ) -> Generator[Progress, None, list[Candidate]]:
        """Decode one crop's points (crop pixels, ``x, y``) against the prompter's current
        embedding: the candidates passing the floor, in crop coordinates, in decoding order."""
        torch = import_torch()
        prompter, params, multimask = self.prompter, self.params, self.multimask
        emb, ctx = prompter.require_image()
        size = emb.original_size
        thresh = float(prompter.sam.mask_threshold)
        low = thresh - params.stability_score_offset
        high = thresh + params.stability_score_offset
        sub = max(1, int(prompter.batch_size))
        found: list[Candidate] = []
        step = params.points_per_batch
        for batch in (points[i : i + step] for i in range(0, len(points), step)):
            check_cancel(cancel)
            for start in range(0, len(batch), sub):
                pts = batch[start : start + sub]
                coords = prompter.to_input_frame(pts)[:, None, :]
                labels = torch.ones((len(pts), 1), dtype=torch.int, device=coords.device)
                sparse = prompter.decoder.embed_prompts(coords, labels)
                queries, keys, iou = prompter.decoder.decode_scores(ctx, sparse, multimask)
                iou = iou.float().cpu().numpy()
                passing = self.floor.iou_passes(iou)
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
                            logits[k, j], emb.input_size, size, threshold=low
                        )
                        union = int((values > low).sum())
                        inter = int((values > high).sum())
                        stability = inter / union if union else float("nan")
                        if not self.floor.stability_passes(stability):
                            continue
                        point = (float(pts[row, 0]), float(pts[row, 1]))
                        score = float(iou[row, j])
                        found.append(Candidate.of(values > thresh, y0, x0, score, stability, point))
            done += len(batch)
            yield Progress(done, total, f"Decoding points ({done}/{total})")
        return found

    def generate(self, params: AutomaskParams | Mapping[str, Any] | None = None) -> AutomaskResult:
        """The objects under ``params``' thresholds (default: the set-up's), from the kept
        candidates: nothing is decoded. ``params`` must share the set-up's grid and keep
        thresholds at or above its floor (:meth:`covers`)."""
        params = self.params if params is None else _as_params(params)
        if self.shape is None:
            raise BadInputError("Automask: decode the point grid first (initialize).")
        if not self.covers(params):
            raise BadInputError(
                "Automask: these parameters change the point grid or lower a threshold "
                "below what the set-up kept; run the set-up again."
            )
        masks = [m for crop in self.crops for m in crop.select(params)]
        if len(self.crops) > 1 and masks:
            masks = merge_crops(masks, params)
        if params.min_mask_region_area > 0 and masks:
            masks = clean_small_regions(masks, params)
        return AutomaskResult(masks, self.shape, params)


def generate_masks(
    prompter: Any,
    image: np.ndarray,
    params: AutomaskParams | Mapping[str, Any] | None = None,
    channels: Sequence[int] | None = None,
    cancel: threading.Event | None = None,
    multimask: bool = True,
) -> Generator[Progress, None, AutomaskResult]:
    """Every object SAM finds from a grid of points on ``image`` (YX or YXC): one set-up
    keeping only what ``params``' thresholds pass, then one generate.

    ``multimask=False`` decodes SAM's single-mask output (one mask per point) instead of
    the reference generator's three.

    A progress generator (drain it with :func:`~napari_cellsparse.core.progress.run_sync`):
    embeddings first (the whole image's is cached and reused), then one step per batch of
    ``points_per_batch`` points; ``cancel`` is checked before every batch.
    """
    generator = AutomaskGenerator(prompter, params, multimask, keep_all=False)
    yield from generator.initialize(image, channels, cancel)
    return generator.generate()
