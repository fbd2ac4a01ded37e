"""train / load_model / list_models: the one Python API every front end uses.

``train_iter`` is the generator form (yields :class:`~napari_cellsparse.progress.Progress`,
returns the :class:`TrainedModel`) that widgets run in a thread worker; ``train`` drains it and
calls ``progress(step, total, info)``. Cancel is a :class:`threading.Event`: training stops
before the next step and the model trained so far is tuned, saved and returned with
``info["stopped_early"] = True``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, WeightsError
from ..progress import Progress, on_steps, run_sync
from .annotations import annotated_diameters
from .backend import backend_class
from .inputs import training_pairs
from .model import TrainedModel, normalize
from .sampling import SparseDataset
from .scale import foreground_diameter, rescale_image, resize_labels
from .store import (
    CONFIG_FILE,
    METADATA_FILE,
    model_folder,
    now,
    read_json,
    resolve_model_folder,
    save_training,
)

__all__ = ["load_model", "train", "train_iter"]

ProgressFn = Callable[[int, int, dict[str, Any]], None]


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
    **settings: Any,
) -> Generator[Progress, None, TrainedModel]:
    """Train (or continue training) model ``name``; see :func:`train`.

    ``preview`` (a 2D image) is predicted every ``preview_every`` steps; the labels travel in
    ``Progress.info["preview"]``. Other keyword ``settings`` override config entries
    (``patch_size``, ``batch_size``, ``learning_rate``, ``target_diameter``, backend keys).
    """
    cls = backend_class(backend)
    folder = model_folder(name)
    pairs = training_pairs(images, labels)
    n_channels = int(pairs[0][0].shape[-1])
    unknown = set(settings) - set(cls.default_config())
    if unknown:
        raise BadInputError(
            f"Unknown setting(s) for {backend}: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(cls.default_config()))}."
        )
    previous = None if reset else _previous(folder, backend, n_channels)
    config = {**cls.default_config(), **(previous[0] if previous else {}), **settings}
    total = int(steps if steps is not None else config["steps"])
    if total < 0:
        raise BadInputError(f"steps must be 0 or more, got {total}.")

    yield Progress(0, total, "Preparing the training data")
    dataset, calibration = _prepare(pairs, config)
    config.update(calibration)
    network = cls(config, n_channels, device)
    if previous is None:
        network.build()
    else:
        network.load(folder)
    meta = previous[1] if previous else {"name": name, "backend": backend, "created": now()}

    rng = np.random.default_rng(int(config["seed"]) + int(meta.get("steps", 0)))
    model = TrainedModel(network, folder, meta)
    started = time.perf_counter()
    done = 0
    stopped = False
    losses: list[float] = []
    stepper = network.train_steps(dataset, total, rng) if total else iter(())
    while done < total:
        if cancel is not None and cancel.is_set():
            stopped = True
            break
        info = dict(next(stepper))
        done += 1
        losses.append(float(info["loss"]))
        if preview is not None and preview_every and (done % preview_every == 0 or done == total):
            info["preview"] = model.predict(preview)
        yield Progress(done, total, f"Training {backend}: step {done}/{total}", info)
    if hasattr(stepper, "close"):
        stepper.close()

    loop_s = time.perf_counter() - started
    yield Progress(done, total, "Tuning thresholds on the annotated pixels")
    config.update(network.tune(dataset))
    train_s = time.perf_counter() - started
    session = {
        "date": now(),
        "steps": done,
        "images": [list(p[0].shape) for p in pairs],
        "annotated_cells": int(sum(len(np.unique(p[1][p[1] > 0])) for p in pairs)),
        "stopped_early": stopped,
        "train_s": round(train_s, 2),
        "tune_s": round(train_s - loop_s, 2),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    save_training(
        folder,
        meta,
        session,
        {**config, "n_channels": n_channels},
        network.save,
        name=name,
        backend=backend,
        images=len(pairs),
        n_channels=n_channels,
        device=str(network.device),
    )
    model.info = {**meta, "stopped_early": stopped, "train_s": train_s, "losses": losses}
    yield Progress(done, total, f"Saved model {name!r}")
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
    info)`` is called after every step (``info["loss"]``).
    """
    work = train_iter(backend, images, labels, name=name, steps=steps, cancel=cancel, **kwargs)
    return run_sync(work, on_steps(progress))


def load_model(name_or_path: str | Path, device: str | None = None) -> TrainedModel:
    """A model from the store by name, or from a model folder path."""
    folder = resolve_model_folder(name_or_path)
    meta = read_json(folder / METADATA_FILE)
    config = read_json(folder / CONFIG_FILE)
    backend = meta.get("backend")
    if not isinstance(backend, str):
        raise WeightsError(f"{folder / METADATA_FILE} does not say which backend made it.")
    if backend == "counter":
        raise BadInputError(
            f"The model {folder.name!r} is a cell counter, not a segmentation model; load it "
            "with napari_cellsparse.counting.load_counter (or the Cell counting widget)."
        )
    cls = backend_class(backend)
    try:
        n_channels = int(config.pop("n_channels"))
        full = {**cls.default_config(), **config}
        network = cls(full, n_channels, device)
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{folder / CONFIG_FILE} is damaged ({err}).") from err
    network.load(folder)
    return TrainedModel(network, folder, {**meta, "stopped_early": False})


def _previous(folder: Path, backend: str, n_channels: int) -> tuple[dict, dict] | None:
    """Config and metadata of the model to continue, or None when there is none yet."""
    if not (folder / METADATA_FILE).exists():
        return None
    meta = read_json(folder / METADATA_FILE)
    config = read_json(folder / CONFIG_FILE)
    if meta.get("backend") != backend:
        raise BadInputError(
            f"The model {folder.name!r} is a {meta.get('backend')} model, not {backend}; "
            "choose another name, or reset it to start afresh."
        )
    if int(config.pop("n_channels", n_channels)) != n_channels:
        raise BadInputError(
            f"The model {folder.name!r} was trained on images with another number of channels; "
            "choose another name, or reset it to start afresh."
        )
    return config, meta


def _prepare(
    pairs: list[tuple[np.ndarray, np.ndarray]], config: dict[str, Any]
) -> tuple[SparseDataset, dict[str, Any]]:
    """Normalise and rescale every pair to the training scale; measure the object scale."""
    per_image = [annotated_diameters(lab) for _, lab in pairs]
    all_d = np.concatenate(per_image)
    train_d = float(np.median(all_d))
    target = float(config["target_diameter"])
    normalized = [normalize(img) for img, _ in pairs]
    masks = [lab for _, lab in pairs]
    inside = np.concatenate([n[m > 0].mean(-1) for n, m in zip(normalized, masks, strict=True)])
    outside = np.concatenate([n[m == 0].mean(-1) for n, m in zip(normalized, masks, strict=True)])
    polarity = 1.0 if inside.mean() >= outside.mean() else -1.0
    ratios = []
    images, labels = [], []
    for norm, (_, lab), d in zip(normalized, pairs, per_image, strict=True):
        d_img = float(np.median(d)) if len(d) else train_d
        if len(d):
            found = foreground_diameter(norm, polarity)
            if found:
                ratios.append(d_img / found)
        factor = target / d_img
        scaled = rescale_image(norm, factor)
        images.append(scaled)
        labels.append(resize_labels(lab, scaled.shape[:2]))
    calibration = {
        "train_diameter": train_d,
        "polarity": polarity,
        "diameter_calibration": float(np.median(ratios)) if ratios else 1.0,
    }
    return SparseDataset(images, labels), calibration
