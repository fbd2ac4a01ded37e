"""train / load_model / list_models: the one Python API every front end uses.

``train_iter`` is the generator form (yields :class:`~napari_cellsparse.core.progress.Progress`,
returns the :class:`TrainedModel`) that widgets run in a thread worker; ``train`` drains it and
calls ``progress(step, total, info)``. Cancel is a :class:`threading.Event`: training stops
before the next step and the model trained so far is tuned, saved and returned with
``info["stopped_early"] = True``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError, WeightsError
from ..core.images import as_list, normalize
from ..core.limits import check_training
from ..core.progress import Progress, on_steps, run_sync
from ..core.sparse_labels import IGNORE, count_cells
from ..models.scale import (
    annotated_diameters,
    cell_signal,
    foreground_mask,
    mask_diameter,
    rescale_image,
    resize_labels,
    shrunk_calibration,
)
from ..models.store import (
    METADATA_FILE,
    current_folder,
    model_folder,
    read_json,
    resolve_model_folder,
)
from .backend import backend_class
from .config import ObjectScale, TrainingConfig
from .contrast import RING, typical_snr
from .inputs import training_pairs
from .model import MAX_SCALED_PIXELS, TrainedModel
from .sampling import SparseDataset
from .self_training import pseudo_label
from .stored import THRESHOLDS_FILE, read_stored, settings_for, write_thresholds

__all__ = ["load_model", "train", "train_iter"]

ProgressFn = Callable[[int, int, dict[str, Any]], None]

# info["warning"] of a model that finds none of its annotated cells at any threshold.
NOTHING_FOUND = (
    "The model finds none of the annotated cells at any threshold: train it further (more "
    "steps), or annotate more cells, before predicting with it."
)


def train_iter(
    backend: str,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    name: str = "model",
    steps: int | None = None,
    reset: bool = False,
    device: str | None = None,
    cancel: threading.Event | None = None,
    preview: np.ndarray | None = None,
    preview_every: int = 0,
    updates: Callable[[], list[np.ndarray] | None] | None = None,
    update_every: int = 25,
    config: TrainingConfig | None = None,
    **settings: Any,
) -> Generator[Progress, None, TrainedModel]:
    """Train (or continue training) model ``name``; see :func:`train`.

    ``preview`` (a 2D image) is predicted every ``preview_every`` steps; the labels travel in
    ``Progress.info["preview"]``. ``updates()`` is asked every ``update_every`` steps for the
    annotation as it is now (label images like ``labels``, or None when unchanged): training
    goes on from the current weights on the new annotation, and that step's
    ``info["annotation"]`` has its ``cells`` and ``trusted_pixels`` (the first step's has the
    starting ones); an update that cannot be used is reported in ``info["annotation_error"]``.
    ``config`` is the backend's configuration (e.g. a
    :class:`~napari_cellsparse.training.config.UNetConfig`); without it, the defaults, or a
    continued model's stored configuration. Other keyword ``settings`` override its entries
    (``patch_size``, ``batch_size``, ``learning_rate``, ``target_diameter``, backend keys) or
    set the starting thresholds (``prob_thresh``...), which ``tune()`` replaces.
    """
    from ..models.session import TrainingSession  # models.session imports this package

    check_training(steps, settings)  # before the backend (and its framework) is imported
    cls = backend_class(backend)
    folder = model_folder(name)
    pairs = training_pairs(images, labels)
    n_channels = int(pairs[0][0].shape[-1])
    settings_for(cls, settings, config=config)  # unknown names refused before any work
    session = TrainingSession(folder, backend, n_channels, reset)
    stored = session.previous_config or {}
    if session.source is not None and (session.source / THRESHOLDS_FILE).is_file():
        stored = {**stored, **read_json(session.source / THRESHOLDS_FILE)}
    config, thresholds = settings_for(cls, settings, stored, config)  # a stored one, too
    total = int(steps if steps is not None else config.steps)

    yield Progress(0, total, "Preparing the training data")
    annotation = _Annotation(images, labels, pairs, config.target_diameter, config.touching_cells)
    network = cls(config, n_channels, device, thresholds)
    if session.source is None:
        network.build()
    else:
        network.load(session.source)
    rng = session.rng(config.seed)
    model = TrainedModel(network, folder, session.meta, annotation.scale)

    def add_preview(done: int, info: dict[str, Any]) -> None:
        if preview is not None and preview_every and (done % preview_every == 0 or done == total):
            model.scale = annotation.scale
            info["preview"] = model.predict(preview)

    extra_steps = round(total * config.self_training)
    stepper = network.train_steps(annotation.dataset, total, rng) if total else iter(())
    run = {
        "cancel": cancel,
        "updates": updates,
        "update_every": update_every,
        "rebuild": annotation.rebuild,
        "extra": add_preview,
    }
    title = f"Training {backend}"
    figures = annotation.figures()
    yield from session.run(stepper, total, title, config.learning_rate, figures=figures, **run)
    if extra_steps and not session.stopped:
        yield Progress(session.done, total, "Self-training: the model's confident cells")
        model.scale = annotation.scale
        added = annotation.self_train(model)
        total += extra_steps
        title = f"Self-training {backend} with {added} more cells"
        stepper = network.train_steps(annotation.dataset, extra_steps, rng)
        yield from session.run(stepper, total, title, config.learning_rate, **run)
    session.check_weights(network.weights_finite(), config.learning_rate)
    yield Progress(session.done, total, "Tuning thresholds on the annotated pixels")
    network.tune(annotation.dataset)
    model.scale = annotation.scale
    pairs = annotation.pairs
    record = session.record(
        images=[list(p[0].shape) for p in pairs],
        annotated_cells=annotation.figures()["cells"],
        **({"self_training_cells": annotation.pseudo_cells} if extra_steps else {}),
    )

    def save(version: Path) -> None:
        network.save(version)
        write_thresholds(version, network.thresholds)

    session.save(
        record,
        model.settings().config_file(),
        save,
        images=len(pairs),
        n_channels=n_channels,
        device=str(network.device),
    )
    model.info = session.result_info()
    if network.thresholds.tuned_annotated_f1 == 0.0 and annotation.figures()["cells"]:
        model.info["warning"] = NOTHING_FOUND
    yield Progress(session.done, total, f"Saved model {name!r}")
    return model


def train(
    backend: str,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    name: str = "model",
    steps: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> TrainedModel:
    """Train a ``"stardist"``, ``"cellpose"`` or ``"unet"`` model on sparse annotations.

    ``labels`` follow the layer convention (0 = not annotated, 1 = background, 2+ = one id
    per cell). Training under an existing name continues from its weights (``reset=True``
    starts afresh); the model is saved in the store and returned. ``progress(step, total,
    info)`` is called after every step (``info["loss"]``). A loss or weights that stop being
    finite numbers raise :class:`~napari_cellsparse.core.errors.TrainingDivergedError` and nothing
    is saved (the previous version stays).
    """
    work = train_iter(backend, images, labels, name=name, steps=steps, cancel=cancel, **kwargs)
    return run_sync(work, on_steps(progress))


def load_model(name_or_path: str | Path, device: str | None = None) -> TrainedModel:
    """A model from the store by name, from a model folder path, or from a bioimage.io
    package (``.zip``) exported by this plugin (its declared weights, our post-processing)."""
    from .bioimage_io.load import is_package, load_package

    if is_package(name_or_path):
        return load_package(name_or_path, device)
    folder = resolve_model_folder(name_or_path)
    files = current_folder(folder)
    meta = read_json(files / METADATA_FILE)
    backend = meta.get("backend")
    if not isinstance(backend, str):
        raise WeightsError(f"{files / METADATA_FILE} does not say which backend made it.")
    if backend == "counter":
        raise BadInputError(
            f"The model {folder.name!r} is a cell counter, not a segmentation model; load it "
            "with napari_cellsparse.counting.load_counter (or the Cell counting widget)."
        )
    cls = backend_class(backend)
    stored = read_stored(cls, files)
    network = cls(stored.config, stored.n_channels, device, stored.thresholds)
    network.load(files)
    return TrainedModel(network, folder, {**meta, "stopped_early": False}, stored.scale)


class _Annotation:
    """The annotation training runs on, at the training scale; replaced by updates."""

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[np.ndarray],
        pairs: list[tuple[np.ndarray, np.ndarray]],
        target_diameter: float,
        touching: float = 0.0,
    ) -> None:
        self.images = images
        self.labels = as_list(labels, "annotations")
        self.pairs = pairs
        self.target_diameter = target_diameter
        self.dataset, self.scale, self.diameters = _prepare(pairs, target_diameter, touching)
        self.pseudo_cells = 0

    def self_train(self, model: TrainedModel) -> int:
        """Train from now on with ``model``'s confident cells added to the annotation (the
        pairs, their figures and the object scale stay the person's); the cells added."""
        grown, self.pseudo_cells = pseudo_label(model, self.pairs)
        grown_data = _prepare(grown, self.target_diameter, self.dataset.touching, self.diameters)[0]
        self.dataset.replace(grown_data)
        return self.pseudo_cells

    def figures(self) -> dict[str, int]:
        """Annotated cells and the image pixels the loss trusts (cells and background)."""
        return {
            "cells": count_cells(lab for _, lab in self.pairs),
            "trusted_pixels": int(sum(np.count_nonzero(lab != IGNORE) for _, lab in self.pairs)),
        }

    def rebuild(self, update: np.ndarray | Sequence[np.ndarray]) -> dict[str, int] | None:
        """Train on ``update`` from now on (the sampling and the scale calibration); its
        figures, or None when it is the annotation already used. Raises on a bad update."""
        labels = as_list(update, "annotations")
        if len(labels) != len(self.labels):
            raise BadInputError(
                f"the update has {len(labels)} label image(s); training has {len(self.labels)}"
            )
        for k, (new, old) in enumerate(zip(labels, self.labels, strict=True)):
            if new.shape != old.shape:
                raise BadInputError(
                    f"label image {k + 1} of the update has shape {new.shape}, not {old.shape}"
                )
        if all(np.array_equal(a, b) for a, b in zip(labels, self.labels, strict=True)):
            return None
        pairs = training_pairs(self.images, labels)
        dataset, self.scale, self.diameters = _prepare(
            pairs, self.target_diameter, self.dataset.touching
        )
        self.dataset.replace(dataset)
        self.labels, self.pairs = labels, pairs
        self.pseudo_cells = 0  # the cells self-training added are not in the new data
        return self.figures()


def _prepare(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    target: float,
    touching: float = 0.0,
    diameters: list[float] | None = None,
) -> tuple[SparseDataset, ObjectScale, list[float]]:
    """Normalise and rescale every pair to the training scale; measure the object scale.

    The diameter estimate's calibration is trusted as far as the annotated cells cover the
    images' foreground (:func:`~napari_cellsparse.models.scale.shrunk_calibration`).
    Each image is rescaled by its annotated cells' median diameter, or by ``diameters``
    when given: self-training keeps the person's scale (the model predicts at it), whatever
    the sizes of the cells it adds. Returns the dataset, the scale and the diameters used.
    """
    per_image = [annotated_diameters(lab) for _, lab in pairs]
    all_d = np.concatenate(per_image)
    train_d = float(np.median(all_d))
    normalized = [normalize(img) for img, _ in pairs]
    masks = [lab for _, lab in pairs]
    inside = np.concatenate([n[m > 0].mean(-1) for n, m in zip(normalized, masks, strict=True)])
    outside = np.concatenate([n[m == 0].mean(-1) for n, m in zip(normalized, masks, strict=True)])
    polarity = 1.0 if inside.mean() >= outside.mean() else -1.0
    ratios, widest, narrowest, cell_area, foreground_area = [], 0.0, np.inf, 0, 0
    images, labels, used = [], [], []
    for k, (norm, (_, lab), d) in enumerate(zip(normalized, pairs, per_image, strict=True)):
        d_img = diameters[k] if diameters else float(np.median(d)) if len(d) else train_d
        used.append(d_img)
        if len(d):
            widest = max(widest, float(d.max()) * target / d_img)
            narrowest = min(narrowest, float(d.min()) * target / d_img)
            foreground = foreground_mask(norm, polarity)
            found = mask_diameter(foreground) if foreground is not None else None
            if found:
                ratios.append(d_img / found)
                cell_area += int(np.count_nonzero(lab > 0))
                foreground_area += int(np.count_nonzero(foreground))
        factor = target / d_img
        if norm.shape[0] * norm.shape[1] * factor**2 > MAX_SCALED_PIXELS:
            raise BadInputError(
                f"Cells of {d_img:.1f} px brought to target_diameter {target:g} px would make "
                f"a {norm.shape[1]} x {norm.shape[0]} image {factor:.1f}x larger, beyond "
                f"{MAX_SCALED_PIXELS:,} pixels; choose a smaller target_diameter."
            )
        scaled = rescale_image(norm, factor)
        images.append(scaled)
        labels.append(resize_labels(lab, scaled.shape[:2]))
    scale = ObjectScale(
        train_diameter=train_d,
        polarity=polarity,
        diameter_calibration=(
            shrunk_calibration(float(np.median(ratios)), cell_area / foreground_area)
            if ratios
            else 1.0
        ),
        widest_cell=widest,  # at the training scale
        narrowest_cell=narrowest if np.isfinite(narrowest) else 0.0,
        cell_snr=typical_snr(labels, [cell_signal(img, polarity) for img in images], RING * target),
    )
    return SparseDataset(images, labels, touching=touching), scale, used
