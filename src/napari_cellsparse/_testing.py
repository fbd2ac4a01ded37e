"""Test doubles for SAM, shared by the tests and the benchmarks (never used by the product).

Random SAM weights decode image-sized noise; these stand-ins answer prompts from a known
label image so that our pipelines and the reference can be compared on real objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["LabelOracle", "OracleDecoder", "RegionOracleDecoder", "oracle_predict_torch"]


class LabelOracle:
    """A stand-in for SAM's mask decoder that answers point prompts from a label image.

    Random SAM weights decode image-sized noise, so the automatic mask generator cannot be
    compared with the reference on real objects without real weights. This deterministic
    function of the prompt gives both pipelines the same structured answer: for a point (in
    SAM's 1024-pixel input frame) it returns three low-resolution logit maps (the object under
    the point, the object grown by a few pixels, and all foreground) as smooth signed
    distances, with IoU predictions that rank them the way SAM tends to. Everything
    downstream of the decoder (thresholds, upsampling, NMS, clean-up) then runs for real.
    """

    def __init__(self, labels: np.ndarray, low: int = 256, slope: float = 12.0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError("LabelOracle needs a 2D label image.")
        self.labels = labels
        h, w = labels.shape
        self.scale = 1024 / max(h, w)
        self.input_size = (int(h * self.scale + 0.5), int(w * self.scale + 0.5))
        self.low = low
        self.slope = slope
        self._maps: dict[int, np.ndarray] = {}

    def _signed(self, region: np.ndarray) -> np.ndarray:
        """Low-resolution logits of a boolean image region: slope x signed distance (low px)."""
        from skimage.transform import resize

        inside = ndimage.distance_transform_edt(region)
        outside = ndimage.distance_transform_edt(~region)
        signed = (inside - outside).astype(np.float32)
        factor = self.scale * self.low / 1024  # low-resolution pixels per image pixel
        frame = np.full((self.low, self.low), -50.0, dtype=np.float32)
        lh = max(1, round(self.input_size[0] * self.low / 1024))
        lw = max(1, round(self.input_size[1] * self.low / 1024))
        small = resize(signed, (lh, lw), order=1, preserve_range=True, anti_aliasing=False)
        frame[:lh, :lw] = np.clip(small * factor * self.slope, -50.0, 50.0)
        return frame

    def _object_maps(self, label: int) -> np.ndarray:
        maps = self._maps.get(label)
        if maps is None:
            obj = self.labels == label
            grown = ndimage.binary_dilation(obj, iterations=3)
            maps = np.stack([self._signed(obj), self._signed(grown), self._signed(self.labels > 0)])
            self._maps[label] = maps
        return maps

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``points`` (B x 2, x and y in the input frame) to logits (B x 3 x low x low) and
        IoU predictions (B x 3); a point on background gets low IoU predictions."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) / self.scale
        h, w = self.labels.shape
        logits = np.empty((len(pts), 3, self.low, self.low), dtype=np.float32)
        ious = np.empty((len(pts), 3), dtype=np.float32)
        for i, (x, y) in enumerate(pts):
            label = int(self.labels[min(int(y), h - 1), min(int(x), w - 1)])
            if label == 0:
                logits[i] = -50.0
                ious[i] = (0.30, 0.20, 0.10)
                continue
            logits[i] = self._object_maps(label)
            # The grown mask of even ids looks less certain and falls under the default
            # threshold (0.88); whole-foreground masks always do.
            ious[i] = (0.96, 0.85 if label % 2 == 0 else 0.90, 0.60)
        return logits, ious


class OracleDecoder:
    """Our :class:`~napari_cellsparse.sam.decoder.FastMaskDecoder` interface on a
    :class:`LabelOracle`: the prompt embedding is the point itself, the oracle decodes it."""

    def __init__(self, decoder: Any, oracle: LabelOracle) -> None:
        self.decoder = decoder
        self.oracle = oracle

    def prepare(self, features: Any) -> Any:
        return self.decoder.prepare(features)

    def embed_prompts(self, points: Any = None, labels: Any = None, boxes: Any = None) -> Any:
        return points

    def decode_scores(self, ctx: Any, sparse: Any, multimask: bool) -> tuple[Any, Any, Any]:
        import torch

        logits, iou = self.oracle(sparse[:, 0].cpu().numpy())
        logits = torch.from_numpy(logits)
        return logits, logits, torch.from_numpy(iou)

    def decode_masks(self, ctx: Any, queries: Any, keys: Any, multimask: bool) -> Any:
        return queries


class RegionOracleDecoder(OracleDecoder):
    """An :class:`OracleDecoder` for a :class:`~napari_cellsparse.sam.large_images.TiledImage`:
    it answers from the labels of the tile (or window) being decoded, so an object cut by a
    tile edge comes back cut, as SAM would see it."""

    def __init__(self, decoder: Any, labels: np.ndarray, tiled: Any) -> None:
        self.decoder = decoder
        self.labels = np.asarray(labels)
        self.tiled = tiled
        self._oracles: dict[Any, LabelOracle] = {}

    @property
    def oracle(self) -> LabelOracle:  # type: ignore[override]
        region = self.tiled.current
        found = self._oracles.get(region)
        if found is None:
            found = self._oracles[region] = LabelOracle(self.labels[region.slices])
        return found


def oracle_predict_torch(predictor: Any, oracle: LabelOracle) -> Callable[..., Any]:
    """A stand-in for ``segment_anything.SamPredictor.predict_torch`` that decodes with
    ``oracle`` and then upsamples with the model's own ``postprocess_masks``, as upstream."""
    import torch

    def predict_torch(
        point_coords: Any,
        point_labels: Any,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Any, Any, Any]:
        low, iou = oracle(point_coords[:, 0].cpu().numpy())
        low = torch.from_numpy(low)
        masks = predictor.model.postprocess_masks(
            low, predictor.input_size, predictor.original_size
        )
        if not return_logits:
            masks = masks > predictor.model.mask_threshold
        return masks, torch.from_numpy(iou), low

    return predict_torch
