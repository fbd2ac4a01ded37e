"""The one small protocol every trainable backend implements, and the lazy registry.

A backend is a :class:`Network` subclass: it builds fresh weights, trains one step at a time
on crops from a :class:`~napari_cellsparse.training.sampling.SparseDataset` (its losses must
ignore label ``-1``), tunes its thresholds on the annotated pixels only, predicts instance
labels for an image already at training scale, and saves/loads its weights in a model folder.
Everything else (annotation conversion, scale, stacks, the model store, progress and cancel)
is shared code in :mod:`napari_cellsparse.training.api`, so adding a backend touches neither
the widgets nor the CLI: add a module and one line to :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import BackendUnavailableError, BadInputError
from .sampling import SparseDataset

__all__ = ["BACKENDS", "COMMON_DEFAULTS", "Network", "backend_class"]

BACKENDS: dict[str, str] = {
    "unet": "napari_cellsparse.training.unet:UNetNetwork",
    "stardist": "napari_cellsparse.training.stardist_backend:StarDistNetwork",
    "cellpose": "napari_cellsparse.training.cellpose_backend:CellposeNetwork",
}

COMMON_DEFAULTS: dict[str, Any] = {
    "target_diameter": 24.0,
    "patch_size": 128,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "steps": 600,
    "seed": 0,
    # Objects wider than this many times the widest annotated cell are left out of
    # predictions (background grown into one object, merged clumps); 0 keeps them all.
    "max_size_factor": 2.0,
}


class Network(ABC):
    """One backend's trainable model, in memory. The shared code owns everything around it."""

    name: ClassVar[str]
    title: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "all"
    defaults: ClassVar[dict[str, Any]] = {}
    weight_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any], n_channels: int, device: str | None) -> None:
        self.config = config
        self.n_channels = n_channels
        self.device = device

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The shared defaults overlaid with this backend's own."""
        return {**COMMON_DEFAULTS, **cls.defaults}

    @abstractmethod
    def build(self) -> None:
        """Create fresh (randomly initialised) weights."""

    @abstractmethod
    def train_steps(
        self, data: SparseDataset, steps: int, rng: np.random.Generator
    ) -> Iterator[dict[str, float]]:
        """Train ``steps`` optimiser steps; yield a dict holding at least ``loss`` after each."""

    def tune(self, data: SparseDataset) -> dict[str, Any]:
        """Tune post-processing thresholds on annotated pixels; return config updates."""
        return {}

    @abstractmethod
    def predict_scaled(self, image: np.ndarray) -> np.ndarray:
        """Instance labels (int32, 0 = background) of a normalised YXC float32 image."""

    @abstractmethod
    def weights_finite(self) -> bool:
        """Whether every weight is a finite number (a diverged training is never saved)."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the weights into ``folder`` (the config and metadata are written for you)."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Read the weights written by :meth:`save`; raise on missing or corrupted files."""


def backend_class(name: str) -> type[Network]:
    """The :class:`Network` class of backend ``name``, importing it (and its framework) now."""
    if name not in BACKENDS:
        raise BadInputError(
            f"Unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}."
        )
    module_name, class_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    cls: type[Network] = getattr(module, class_name)
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"{cls.title} (module {', '.join(missing)})", cls.extra)
    return cls
