"""One automatic-mask object, the objects of one image, and the NMS that ranks them.

Objects stay as windows (:class:`~napari_cellsparse.core.masks.PromptMask`), with the
reference generator's other fields; :meth:`AutomaskResult.labels` paints them into one label
image. :func:`nms` is torchvision's box NMS as segment-anything uses it (also used to merge
tiles of a large image and by the server's per-point output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.lazy import import_torch
from ..core.masks import PromptMask
from ..formats.polygons import mask_outline
from .automask_params import AutomaskParams

__all__ = ["AutoMask", "AutomaskResult", "label_masks", "nms"]


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

    def labels_and_outlines(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """:meth:`labels` and one outline polygon (``y, x`` rows) per object: tracing
        hundreds of outlines belongs in the job's thread, not in a viewer's main thread."""
        labels = self.labels()
        outlines = []
        for index, region in enumerate(ndi.find_objects(labels)):
            if region is None:
                continue
            window = labels[region] == index + 1
            outline = mask_outline(window, (region[0].start, region[1].start))
            if outline is not None:
                outlines.append(outline)
        return labels, outlines


def label_masks(labels: np.ndarray) -> list[PromptMask]:
    """Each object of a label image (YX) as a window mask, in id order (score 1)."""
    masks = []
    for index, region in enumerate(ndi.find_objects(labels)):
        if region is not None:
            window = labels[region] == index + 1
            y0, x0 = region[0].start, region[1].start
            masks.append(PromptMask(window, y0, x0, 1.0, labels.shape))
    return masks


def nms(
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
