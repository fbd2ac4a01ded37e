"""The one small protocol every trainable backend implements, and the lazy registry.

A backend is a :class:`Network` subclass: it builds fresh weights, trains one step at a time
on crops from a :class:`~napari_cellsparse.training.sampling.SparseDataset` (its losses must
ignore label ``-1``), tunes its thresholds on the annotated pixels only, predicts instance
labels for an image already at training scale, and saves/loads its weights in a model folder.
Its settings are a frozen :mod:`~napari_cellsparse.training.config` configuration, and what
``tune()`` finds is a :class:`~napari_cellsparse.training.config.Thresholds` kept apart.
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
from typing import ClassVar

import numpy as np

from ..core.errors import BackendUnavailableError, BadInputError
from .config import Thresholds, TrainingConfig
from .sampling import SparseDataset

__all__ = ["BACKENDS", "Network", "backend_class"]

BACKENDS: dict[str, str] = {
    "unet": "napari_cellsparse.training.unet:UNetNetwork",
    "stardist": "napari_cellsparse.training.stardist_backend:StarDistNetwork",
    "cellpose": "napari_cellsparse.training.cellpose_backend:CellposeNetwork",
}


class Network(ABC):
    """One backend's trainable model, in memory. The shared code owns everything around it."""

    name: ClassVar[str]
    title: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "all"
    config_class: ClassVar[type[TrainingConfig]] = TrainingConfig
    thresholds_class: ClassVar[type[Thresholds]] = Thresholds
    weight_files: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: TrainingConfig,
        n_channels: int,
        device: str | None,
        thresholds: Thresholds | None = None,
    ) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} takes a {self.config_class.__name__}, not {config!r}")
        self.config = config
        self.thresholds = thresholds if thresholds is not None else self.thresholds_class()
        if not isinstance(self.thresholds, self.thresholds_class):
            raise TypeError(f"{self.name} takes {self.thresholds_class.__name__}, not {thresholds}")
        self.n_channels = n_channels
        self.device = device

    @classmethod
    def load_framework(cls) -> None:
        """Import the backend's libraries now, so that a training or prediction started
        later does not wait for them (the widgets' worker does it when a backend is chosen)."""
        for module in cls.requires:
            importlib.import_module(module)

    @abstractmethod
    def build(self) -> None:
        """Create fresh (randomly initialised) weights."""

    @abstractmethod
    def train_steps(
        self, data: SparseDataset, steps: int, rng: np.random.Generator
    ) -> Iterator[dict[str, float]]:
        """Train ``steps`` optimiser steps; yield a dict holding at least ``loss`` after each."""

    def tune(self, data: SparseDataset) -> Thresholds:
        """Tune the post-processing thresholds on the annotated pixels: the network predicts
        with them from now on (its configuration stays as it is); returns them."""
        self.thresholds = self.find_thresholds(data)
        return self.thresholds

    def find_thresholds(self, data: SparseDataset) -> Thresholds:
        """The thresholds scoring best on the annotated pixels (default: those in use)."""
        return self.thresholds

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
