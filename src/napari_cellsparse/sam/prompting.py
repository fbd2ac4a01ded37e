"""Box and point prompting: one image embedding, many prompts, full-resolution masks.

:class:`SamPrompter` holds a loaded SAM model, the fast decoder and an embedding cache.
``set_image`` (a progress generator) computes or fetches the image embedding; ``boxes`` and
``points`` then decode prompts against it. Coordinates are image pixels, boxes are
``x0, y0, x1, y1`` (samapi's order) and points ``x, y``. :class:`Promptable` is what it
shares with :class:`~napari_cellsparse.sam.large_images.TiledImage`, so front ends prompt
either alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..core.devices import resolve_device
from ..core.errors import BadInputError
from ..core.images import to_rgb_uint8
from ..core.lazy import import_torch
from ..core.masks import PromptMask
from ..core.progress import Progress, run_sync
from .decoder import FastMaskDecoder, ImageContext
from .embedding import EmbeddingCache, ImageEmbedding, compute_embedding, image_signature
from .models import load_sam
from .upsample import upsample_logits

__all__ = ["Promptable", "SamPrompter", "check_boxes"]

log = logging.getLogger(__name__)

MIN_BOX_SIDE = 2


def check_boxes(boxes: Any, shape: tuple[int, int]) -> np.ndarray:
    """Validate ``N x 4`` boxes (x0, y0, x1, y1) against an image of ``shape`` (H, W).

    Corners may come in any order; boxes are clipped to the image. A box entirely outside
    the image or thinner than 2 pixels raises :class:`BadInputError` saying which one.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise BadInputError(f"Boxes must be N x 4 (x0, y0, x1, y1); got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise BadInputError("Box coordinates must be finite numbers.")
    h, w = shape
    x0, x1 = np.minimum(arr[:, 0], arr[:, 2]), np.maximum(arr[:, 0], arr[:, 2])
    y0, y1 = np.minimum(arr[:, 1], arr[:, 3]), np.maximum(arr[:, 1], arr[:, 3])
    for i in range(len(arr)):
        if x1[i] <= 0 or y1[i] <= 0 or x0[i] >= w or y0[i] >= h:
            raise BadInputError(f"Box {i + 1} lies outside the image ({w} x {h} pixels).")
    out = np.stack([np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)], 1)
    thin = np.flatnonzero(
        (out[:, 2] - out[:, 0] < MIN_BOX_SIDE) | (out[:, 3] - out[:, 1] < MIN_BOX_SIDE)
    )
    if thin.size:
        raise BadInputError(
            f"Box {thin[0] + 1} is too small (under {MIN_BOX_SIDE} pixels wide or high); "
            "draw a box around the whole object."
        )
    return out


@runtime_checkable
class Promptable(Protocol):
    """What answers box and point prompts in image pixels: a :class:`SamPrompter` with its
    image set, or a :class:`~napari_cellsparse.sam.large_images.TiledImage` (a large image,
    tile by tile)."""

    def boxes(self, boxes: Any, multimask: bool = False) -> list[PromptMask]:
        """One object per box (``x0, y0, x1, y1``)."""
        ...

    def points(
        self, points: Any, labels: Any, box: Any | None = None, multimask: bool = True
    ) -> PromptMask:
        """One object from positive (1) and negative (0) points ``x, y``."""
        ...

    def prompt(
        self,
        points: Any | None = None,
        labels: Any | None = None,
        box: Any | None = None,
        multimask: bool = False,
    ) -> list[PromptMask]:
        """Every mask SAM proposes for one prompt (points, a box or both)."""
        ...


class SamPrompter:
    """A SAM model ready for prompts, with per-image precomputation and an embedding cache."""

    def __init__(
        self,
        sam: Any,
        model_key: str,
        cache: EmbeddingCache | None = None,
        batch_size: int = 1,
    ) -> None:
        self.sam = sam
        self.model_key = model_key
        self.cache = cache if cache is not None else EmbeddingCache()
        # Measured on a 2-core CPU: decoding boxes one at a time is faster per box than in
        # batches (memory-bound); a GPU may prefer larger batches.
        self.batch_size = max(1, int(batch_size))
        self.decoder = FastMaskDecoder(sam)
        self.embedding: ImageEmbedding | None = None
        self._context: ImageContext | None = None

    @classmethod
    def load(
        cls,
        model_type: str = "vit_t",
        weights: str | os.PathLike | None = None,
        device: str | None = "auto",
        cache: EmbeddingCache | None = None,
    ) -> SamPrompter:
        """Load SAM weights (see :func:`~napari_cellsparse.sam.models.load_sam`)."""
        device = resolve_device(device)
        sam, path = load_sam(model_type, weights, device)
        stat = Path(path).stat()
        key = f"{model_type}|{Path(path).resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
        return cls(sam, key, cache, batch_size=1 if device == "cpu" else 16)

    @property
    def device(self) -> Any:
        return next(self.sam.parameters()).device

    # -- image -------------------------------------------------------------------------
    def set_image(
        self, image: np.ndarray, channels: Sequence[int] | None = None
    ) -> Generator[Progress, None, ImageEmbedding]:
        """Use ``image`` (YX or YXC) for the next prompts: cached embedding or the encoder."""
        # The signature is of the image as given (plus the channel choice), so a cache hit
        # skips the conversion to RGB as well as the encoder.
        signature = self.signature(image, channels)
        embedding = self.cache.get(signature, str(self.device))
        if embedding is None:
            rgb = to_rgb_uint8(image, channels)
            embedding = yield from compute_embedding(self.sam, rgb, signature)
            self.cache.put(embedding)
        else:
            log.debug("embedding cache hit %s", signature[:12])
        self.use_embedding(embedding)
        return embedding

    def signature(self, image: np.ndarray, channels: Sequence[int] | None = None) -> str:
        """The cache key of ``image``'s embedding with this model and channel choice."""
        choice = None if channels is None else list(channels)
        return image_signature(np.asarray(image), f"{self.model_key}|channels={choice}")

    def set_image_sync(self, image: np.ndarray, channels: Sequence[int] | None = None) -> None:
        """Synchronous :meth:`set_image`."""
        run_sync(self.set_image(image, channels))

    def use_embedding(self, embedding: ImageEmbedding) -> None:
        """Decode the next prompts against ``embedding``."""
        if self.embedding is not None and self.embedding.signature == embedding.signature:
            return
        self.embedding = embedding
        self._context = self.decoder.prepare(embedding.features.to(self.device))

    def require_image(self) -> tuple[ImageEmbedding, ImageContext]:
        """The current image's embedding and decoder context (for code decoding its own
        prompts, such as the automask grid); :class:`BadInputError` when none is set."""
        if self.embedding is None or self._context is None:
            raise BadInputError("No image is set: compute the image embedding first.")
        return self.embedding, self._context

    # -- prompts -------------------------------------------------------------------------
    def to_input_frame(self, coords: np.ndarray) -> Any:
        """Image-pixel ``x, y`` coordinates (any shape ending in 2) as a float32 tensor on
        the model's device, in the frame of the resized encoder input the decoder expects."""
        emb, _ = self.require_image()
        torch = import_torch()
        h, w = emb.original_size
        scale = np.array([emb.input_size[1] / w, emb.input_size[0] / h])
        pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2) * scale
        return torch.as_tensor(pts.reshape(coords.shape), dtype=torch.float32, device=self.device)

    def decode_boxes(self, boxes: np.ndarray, multimask: bool = False) -> tuple[Any, Any]:
        """Low-resolution logits (N x M x 256 x 256) and IoU predictions (N x M) of boxes."""
        emb, ctx = self.require_image()
        torch = import_torch()
        if np.asarray(boxes).size == 0:
            count = 3 if multimask else 1
            empty = torch.zeros((0, count, 256, 256), device=self.device)
            return empty, torch.zeros((0, count), device=self.device)
        boxes = check_boxes(boxes, emb.original_size)
        frame_boxes = self.to_input_frame(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        logits, ious = [], []
        for start in range(0, len(frame_boxes), self.batch_size):
            sparse = self.decoder.embed_prompts(boxes=frame_boxes[start : start + self.batch_size])
            masks, iou = self.decoder.decode(ctx, sparse, multimask)
            logits.append(masks)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    def boxes(self, boxes: Any, multimask: bool = False) -> list[PromptMask]:
        """One object per box (``x0, y0, x1, y1`` in image pixels)."""
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            return []
        logits, ious = self.decode_boxes(boxes, multimask)
        return [self._to_mask(logits[i], ious[i]) for i in range(len(logits))]

    def points(
        self,
        points: Any,
        labels: Any,
        box: Any | None = None,
        multimask: bool = True,
    ) -> PromptMask:
        """One object from positive (label 1) and negative (label 0) points ``x, y``.

        With ``multimask`` SAM proposes three masks and the best by predicted IoU is kept.
        """
        masks, iou = self._decode_points(points, labels, box, multimask)
        return self._to_mask(masks[0], iou[0])

    def prompt(
        self,
        points: Any | None = None,
        labels: Any | None = None,
        box: Any | None = None,
        multimask: bool = False,
    ) -> list[PromptMask]:
        """Every mask SAM proposes for one prompt (points, a box or both), in SAM's order:
        one, or three with ``multimask``; ``score`` is each one's predicted IoU."""
        if points is None or len(np.asarray(points).reshape(-1)) == 0:
            if box is None:
                raise BadInputError("Give a box, or at least one point, for the prompt.")
            logits, iou = self.decode_boxes(np.asarray(box, dtype=np.float64), multimask)
        else:
            logits, iou = self._decode_points(points, labels, box, multimask)
        emb, _ = self.require_image()
        out = []
        for j in range(logits.shape[1]):
            window, y0, x0 = upsample_logits(logits[0, j], emb.input_size, emb.original_size)
            out.append(PromptMask(window, y0, x0, float(iou[0, j]), emb.original_size))
        return out

    def _decode_points(
        self, points: Any, labels: Any, box: Any | None, multimask: bool
    ) -> tuple[Any, Any]:
        """Checked point prompt (plus optional box) to logits and IoU predictions (1 x M)."""
        emb, ctx = self.require_image()
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        if len(pts) == 0 or len(pts) != len(lab):
            raise BadInputError("Give at least one point, and one label (1 or 0) per point.")
        if not set(np.unique(lab).tolist()) <= {0, 1}:
            raise BadInputError("Point labels must be 1 (object) or 0 (not the object).")
        h, w = emb.original_size
        if not np.isfinite(pts).all():
            raise BadInputError("Point coordinates must be finite numbers.")
        if ((pts < 0) | (pts >= [w, h])).any():
            raise BadInputError(f"A point lies outside the image ({w} x {h} pixels).")
        if not lab.any() and box is None:
            raise BadInputError("Add at least one positive point (or a box) for the object.")
        torch = import_torch()
        frame_box = None
        if box is not None:
            checked = check_boxes(box, emb.original_size)
            frame_box = self.to_input_frame(checked.reshape(-1, 2, 2)).reshape(-1, 4)
        sparse = self.decoder.embed_prompts(
            points=self.to_input_frame(pts)[None],
            labels=torch.as_tensor(lab, dtype=torch.int64, device=self.device)[None],
            boxes=frame_box,
        )
        return self.decoder.decode(ctx, sparse, multimask)

    def _to_mask(self, logits: Any, iou: Any) -> PromptMask:
        emb, _ = self.require_image()
        best = int(iou.argmax())
        window, y0, x0 = upsample_logits(logits[best], emb.input_size, emb.original_size)
        return PromptMask(window, y0, x0, float(iou[best]), emb.original_size)
