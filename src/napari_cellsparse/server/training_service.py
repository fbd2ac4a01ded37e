"""cellsparse-api's endpoints on our sparse training: train, segment, reset.

``/stardist/``, ``/cellpose/`` and ``/elephant/`` (the latter served by the 3-class U-Net,
the model family ELEPHANT uses) train on one image with a sparse label image (0 = not
annotated, 1 = background, 2+ = cells) and/or segment it. Models live in the same store
as the widget's, named ``<endpoint>-<modelname>`` (e.g. ``cellpose-default``), so a model
trained from QuPath can be used in napari and the other way round. Each model trains or
predicts one request at a time; different models, and SAM requests, do not wait.
"""

from __future__ import annotations

import shutil
import threading
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..formats.geojson import labels_to_features
from ..models.store import model_folder
from ..training import load_model, train
from .bodies import CellsparseBody, CellsparseResetBody
from .images import decode_image

__all__ = ["BACKENDS", "TrainingService"]

BACKENDS = {"stardist": "stardist", "cellpose": "cellpose", "elephant": "unet"}
NO_PRETRAINED = (None, "", "random")


def _label_ids(labels: np.ndarray) -> np.ndarray:
    """``b64lbl`` as int32 ids: integers (or floats holding whole numbers) from 0 up;
    anything else is refused rather than cast (a float 1.5 is no object id)."""
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if np.issubdtype(labels.dtype, np.floating):
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            example = labels[~whole].flat[0]
            raise BadInputError(
                f"b64lbl must hold whole-number label ids (0 = not annotated, 1 = background, "
                f"2+ = cells); it is a {labels.dtype} image with values such as {example}."
            )
    elif not np.issubdtype(labels.dtype, np.integer):
        raise BadInputError(f"b64lbl must be an integer label image, not {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise BadInputError(
            f"b64lbl's label ids must be between 0 and {np.iinfo(np.int32).max}; "
            f"they range from {labels.min()} to {labels.max()}."
        )
    return labels.astype(np.int32)


def _features(labels: np.ndarray, simplify: float | None) -> list[dict[str, Any]]:
    """cellsparse-api's response: one feature per object, ``object_idx`` from 0."""
    features = labels_to_features(labels, object_type="annotation", simplify=simplify or 0.0)
    for index, feature in enumerate(features):
        feature["properties"].update({"object_idx": index, "label": "object"})
    return features


class TrainingService:
    """Sparse training behind cellsparse-api's request and response bodies."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    @staticmethod
    def model_name(endpoint: str, modelname: str) -> str:
        name = f"{endpoint}-{modelname}"
        model_folder(name)  # refuses names the store cannot hold, with a message
        return name

    def run(self, endpoint: str, body: CellsparseBody) -> list[dict[str, Any]]:
        """Train when ``body.train``, then segment when ``body.eval`` (else ``[]``)."""
        backend = BACKENDS[endpoint]
        name = self.model_name(endpoint, body.modelname)
        image = decode_image(body.b64img, "b64img")
        with self._lock(name):
            if body.train:
                if not body.b64lbl:
                    raise BadInputError("train is true but there is no b64lbl (label image).")
                labels = decode_image(body.b64lbl, "b64lbl")
                if labels.ndim != 2 or labels.shape != image.shape[:2]:
                    raise BadInputError(
                        f"b64lbl must be a single-channel label image of the image's size "
                        f"{image.shape[:2]}; got {labels.shape}."
                    )
                train(
                    backend,
                    [image],
                    [_label_ids(labels)],
                    name=name,
                    steps=body.epochs * body.steps,
                    device=self.device,
                    patch_size=body.trainpatch,
                    batch_size=body.batchsize,
                    learning_rate=body.lr,
                )
            if not body.eval:
                return []
            if not (model_folder(name)).is_dir():
                raise BadInputError(
                    f"There is no model {body.modelname!r} for {endpoint} yet: train it first "
                    "(train: true, with b64lbl)."
                )
            model = load_model(name, device=self.device)
            labels = model.predict(image, min_area=int(np.ceil(body.minarea)))
        return _features(labels, body.simplify_tol)

    def reset(self, endpoint: str, body: CellsparseResetBody) -> str:
        """Forget the model (the next training starts afresh); returns ``""`` as the API."""
        if body.pretrained not in NO_PRETRAINED:
            raise BadInputError(
                f"Pretrained weights ({body.pretrained!r}) are not available on this server; "
                "reset with pretrained 'random' and train on your annotations."
            )
        name = self.model_name(endpoint, body.modelname)
        with self._lock(name):
            folder = model_folder(name)
            if folder.is_dir():
                shutil.rmtree(folder)
        return ""
