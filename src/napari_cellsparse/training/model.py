"""A trained model as users see it: predict on any supported image, at the right scale.

:class:`TrainedModel` wraps one backend :class:`~napari_cellsparse.training.backend.Network`
with what the shared code knows: the normalisation, the object scale (training diameter,
automatic diameter estimate and its calibration), stacks and channel axes, and the metadata
of the model store.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential

from ..core.errors import BadInputError
from ..core.images import is_flat, normalize
from ..core.limits import check_setting
from ..core.progress import Progress, check_cancel, run_sync
from ..models.scale import cell_signal, foreground_diameter, rescale_image, resize_labels
from .backend import Network
from .config import ObjectScale, Thresholds, TrainingConfig
from .contrast import RING, faint_floor, without_faint
from .inputs import prediction_slices
from .stored import StoredSettings

__all__ = ["TrainedModel"]

MIN_FACTOR, MAX_FACTOR = 1.0 / 16.0, 8.0
MAX_SCALED_PIXELS = 200_000_000


class TrainedModel:
    """A model from the store (or just trained): ``predict`` gives int32 instance labels."""

    def __init__(
        self, network: Network, folder: Path | None, info: dict[str, Any], scale: ObjectScale
    ) -> None:
        self.network = network
        self.folder = folder
        self.info = info
        self.scale = scale

    @property
    def name(self) -> str:
        return str(self.info.get("name", ""))

    @property
    def backend(self) -> str:
        return self.network.name

    @property
    def config(self) -> TrainingConfig:
        """The frozen configuration the network was built and trained with."""
        return self.network.config

    @property
    def thresholds(self) -> Thresholds:
        """The post-processing thresholds in use (those ``tune()`` found)."""
        return self.network.thresholds

    def settings(self) -> StoredSettings:
        """Everything the model's files hold besides weights and metadata."""
        return StoredSettings(self.config, self.thresholds, self.scale, self.n_channels)

    @property
    def n_channels(self) -> int:
        return self.network.n_channels

    def __repr__(self) -> str:
        return f"TrainedModel(name={self.name!r}, backend={self.backend!r}, folder={self.folder})"

    def estimate_diameter(self, normalized: np.ndarray) -> float:
        """Typical cell diameter (pixels) of a normalised YXC slice, calibrated on training."""
        found = foreground_diameter(normalized, self.scale.polarity)
        if found is None:
            return self.scale.train_diameter
        return found * self.scale.diameter_calibration

    def predict(
        self,
        image: np.ndarray,
        diameter: float | None = None,
        axes: str | None = None,
        min_area: int = 0,
    ) -> np.ndarray:
        """Instance labels (int32, 0 = background) of a 2D image or, slice by slice, a stack.

        ``diameter`` (pixels) of the cells in ``image``; None estimates it per slice. Ids are
        unique across a stack. ``min_area`` drops smaller objects. The diameters used are in
        ``self.info["last_diameters"]``. :meth:`predict_iter` does it with progress and cancel.
        """
        return run_sync(self.predict_iter(image, diameter, axes=axes, min_area=min_area))

    def predict_iter(
        self,
        image: np.ndarray,
        diameter: float | None = None,
        axes: str | None = None,
        min_area: int = 0,
        cancel: threading.Event | None = None,
    ) -> Generator[Progress, None, np.ndarray]:
        """:meth:`predict` as a progress generator: one event per slice (a stack's slices are
        numbered); ``cancel`` is checked before each slice."""
        if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
            raise BadInputError(f"The diameter must be a positive number, got {diameter!r}.")
        check_setting("min_area", min_area)
        slices, label_shape = prediction_slices(image, self.n_channels, axes)
        n = len(slices)
        out = np.zeros((n, *label_shape[-2:]), np.int32)
        used = []
        offset = 0
        for k, raw in enumerate(slices):
            check_cancel(cancel)
            yield Progress(k, n, f"Predicting slice {k + 1}/{n}" if n > 1 else "Predicting")
            labels, d = self.predict_slice(raw, diameter)
            if min_area > 0:
                labels = remove_small_objects(labels, min_size=min_area)
            labels = relabel_sequential(labels)[0].astype(np.int32)
            out[k] = np.where(labels > 0, labels + offset, 0)
            offset = int(out[k].max()) if out[k].any() else offset
            used.append(d)
        self.info["last_diameters"] = used
        return out.reshape(label_shape)

    def predict_slice(self, raw: np.ndarray, diameter: float | None) -> tuple[np.ndarray, float]:
        """Labels of one YXC slice and the diameter used for it."""
        if is_flat(raw):
            return np.zeros(raw.shape[:2], np.int32), float(diameter or 0.0)
        normalized = normalize(raw)
        d = float(diameter) if diameter is not None else self.estimate_diameter(normalized)
        return self.predict_normalized(normalized, d), d

    def predict_normalized(self, normalized: np.ndarray, diameter: float) -> np.ndarray:
        """Labels of one YXC slice already normalised (e.g. with the ranges of a whole
        slide, for one block of it) whose cells are ``diameter`` pixels wide."""
        d = float(diameter)
        factor = float(np.clip(self.config.target_diameter / d, MIN_FACTOR, MAX_FACTOR))
        if normalized.shape[0] * normalized.shape[1] * factor**2 > MAX_SCALED_PIXELS:
            raise BadInputError(
                f"At diameter {d:.1f} px this image would be rescaled to "
                f"{factor:.2f}x, too large to predict at once; give a larger diameter or "
                "use the block-wise (batch) prediction."
            )
        scaled = rescale_image(normalized, factor)
        labels = np.asarray(self.network.predict_scaled(scaled), np.int32)
        labels = self._without_faint(self._without_out_of_size(labels), scaled)
        return resize_labels(labels, normalized.shape[:2], smooth=True)

    def _without_faint(self, labels: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """``labels`` (training scale) without objects that stand out of their surroundings
        less than the annotation's cells allow (:mod:`~napari_cellsparse.training.contrast`)."""
        floor = faint_floor(self.config.min_snr, self.scale.cell_snr)
        if floor <= 0:
            return labels
        signal = cell_signal(scaled, self.scale.polarity)
        return without_faint(labels, signal, RING * self.config.target_diameter, floor)

    def _without_out_of_size(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` (training scale) without objects wider than ``max_size_factor`` times
        the widest annotated cell or narrower than ``min_size_factor`` times the narrowest:
        none of the annotation's shapes looks like them."""
        if not labels.any():
            return labels
        areas = np.bincount(labels.ravel())
        drop = np.zeros(len(areas), bool)
        widest, factor = self.scale.widest_cell, self.config.max_size_factor
        if widest > 0 and factor > 0:
            drop |= areas > np.pi / 4.0 * (factor * widest) ** 2
        narrowest, factor = self.scale.narrowest_cell, self.config.min_size_factor
        if narrowest > 0 and factor > 0:
            drop |= (areas > 0) & (areas < np.pi / 4.0 * (factor * narrowest) ** 2)
        drop[0] = False
        return np.where(drop[labels], 0, labels) if drop.any() else labels
