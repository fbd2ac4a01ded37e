"""Sparse training: StarDist, Cellpose and a 3-class U-Net from a few annotated cells.

>>> from napari_cellsparse.training import train, load_model, list_models
>>> model = train("unet", images=img, labels=annotation, name="my-model")
>>> labels = model.predict(img)

Annotations: 0 = not annotated (ignored by every loss), 1 = background, 2+ = one id per cell.
"""

from __future__ import annotations

from ..models.store import list_models, model_names, models_dir, newest_model
from .api import load_model, train, train_iter
from .backend import BACKENDS, Network, backend_class
from .model import TrainedModel

__all__ = [
    "BACKENDS",
    "Network",
    "TrainedModel",
    "backend_class",
    "list_models",
    "load_model",
    "model_names",
    "models_dir",
    "newest_model",
    "train",
    "train_iter",
]
