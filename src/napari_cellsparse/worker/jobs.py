"""The jobs the model worker runs: each a progress generator over the engine's own API.

A job takes a :class:`JobContext` (the cancel event the host's Stop sets, ``pull`` for the
annotation painted since the last pull, and a cache of loaded models that lives as long as
the worker) and plain arguments (arrays, numbers, names); it returns plain results (arrays,
dicts, the engine's result dataclasses), never models or layers. Engine modules are imported
inside the jobs, so the worker starts fast and imports a framework only when a job needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.progress import Progress

__all__ = ["JOBS", "JobContext"]

Job = Generator[Progress, None, Any]


@dataclass
class JobContext:
    """What a running job gets from the worker besides its arguments."""

    cancel: threading.Event
    pull: Callable[[], Any]
    cache: dict[str, Any]


def _version(name: str) -> tuple[Any, ...]:
    """What identifies the saved version of a stored model (changes when it is retrained)."""
    from ..training import list_models

    meta = next((m for m in list_models() if m["name"] == name), None)
    if meta is None or "error" in meta:
        from ..models.store import resolve_model_folder

        resolve_model_folder(name)  # a clear error for an unknown name
        raise BadInputError(f"The model {name!r} cannot be read: {meta and meta['error']}")
    return (name, meta.get("updated"), meta.get("steps"))


def _cached(ctx: JobContext, kind: str, key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """The model cached under ``kind`` when its key matches, else ``load()`` (then cached)."""
    held = ctx.cache.get(kind)
    if held is not None and held[0] == key:
        return held[1]
    ctx.cache.pop(kind, None)
    model = load()
    ctx.cache[kind] = (key, model)
    return model


def echo(ctx: JobContext, value: Any) -> Job:
    """Return ``value`` unchanged: a health check, and the measure of a round trip."""
    yield Progress(0, 0, "Echo")
    return value


def devices(ctx: JobContext) -> Job:
    """The devices torch can use in the worker, best first."""
    from ..core.devices import available_devices

    yield Progress(0, 0, "Looking for devices")
    return available_devices()


def prepare(ctx: JobContext, backend: str) -> Job:
    """Import a segmentation backend's libraries ahead of its first training or prediction
    (TensorFlow takes 5-8 s); returns the seconds it took (0 when already loaded)."""
    import time

    from ..training import backend_class

    cls = backend_class(backend)
    yield Progress(0, 0, f"Loading {cls.title}")
    start = time.perf_counter()
    cls.load_framework()
    return {"backend": backend, "seconds": round(time.perf_counter() - start, 2)}


def train(
    ctx: JobContext,
    backend: str,
    images: list[np.ndarray],
    labels: list[np.ndarray],
    name: str,
    steps: int,
    reset: bool,
    device: str,
    preview: np.ndarray | None,
    preview_every: int,
    settings: dict[str, Any],
    live: bool = False,
) -> Job:
    """Train (or continue) a segmentation model; returns its summary."""
    from ..core.limits import check_training
    from ..training import backend_class, train_iter

    check_training(steps, settings)
    cls = backend_class(backend)
    where = device
    if "torch" in cls.requires:
        from ..core.devices import resolve_device

        where = resolve_device(device)
    elif device == "auto":
        where = "auto (TensorFlow: CPU unless its GPU build is installed)"
    yield Progress(0, steps, f"Preparing {backend} on {where}", {"device": where})
    if live:
        settings = {**settings, "updates": ctx.pull, "update_every": preview_every or 25}
    model = yield from train_iter(
        backend,
        images,
        labels,
        name=name,
        steps=steps,
        reset=reset,
        device=device,
        cancel=ctx.cancel,
        preview=preview,
        preview_every=preview_every,
        **settings,
    )
    ctx.cache["segmentation"] = ((*_version(name), device), model)
    return {
        "name": model.name,
        "backend": model.backend,
        "device": str(model.network.device),
        "info": {k: v for k, v in model.info.items() if k != "losses"},
    }


def predict(
    ctx: JobContext,
    name: str,
    device: str,
    image: np.ndarray,
    rgb: bool,
    diameter: float | None,
    min_area: int,
) -> Job:
    """Labels of an image (2D or a stack, slice by slice), with their object count."""
    model = yield from _segmentation_model(ctx, name, device)
    labels = yield from model.predict_iter(
        np.asarray(image),
        diameter,
        axes=_axes(model, image, rgb),
        min_area=min_area,
        cancel=ctx.cancel,
    )
    return {
        "labels": labels,
        "objects": int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if labels.size else 0,
        "backend": model.backend,
        "device": str(model.network.device),
        "diameters": list(model.info.get("last_diameters") or []),
    }


def where_next(
    ctx: JobContext,
    name: str,
    device: str,
    image: np.ndarray,
    rgb: bool,
    diameter: float | None,
    annotation: np.ndarray | None = None,
) -> Job:
    """Where the model is least sure on a 2D image (an ``UncertaintyResult``): 8 predictions
    under flips and quarter turns compared; ``annotation``'s painted pixels are left out."""
    from ..training.uncertainty import uncertainty_iter

    model = yield from _segmentation_model(ctx, name, device)
    return (
        yield from uncertainty_iter(
            model,
            np.asarray(image),
            diameter,
            annotation,
            axes="YXC" if rgb else None,
            cancel=ctx.cancel,
        )
    )


def _segmentation_model(ctx: JobContext, name: str, device: str) -> Job:
    """The stored segmentation model ``name`` on ``device``, loaded once and kept."""
    from ..training import load_model

    key = (*_version(name), device)
    if ctx.cache.get("segmentation", (None,))[0] != key:
        yield Progress(0, 0, f"Loading model '{name}'")
    return _cached(ctx, "segmentation", key, lambda: load_model(name, device))


def _axes(model: Any, data: np.ndarray, rgb: bool) -> str | None:
    """The axes of a napari image for ``model``: RGB is channels last; a stack of a one-channel
    model (or of RGB) is predicted slice by slice; otherwise the model guesses."""
    if np.ndim(data) == (4 if rgb else 3) and (rgb or model.n_channels == 1):
        return "ZYXC" if rgb else "ZYX"
    return "YXC" if rgb else None


def train_counter(
    ctx: JobContext,
    image: np.ndarray,
    points: np.ndarray,
    name: str,
    background: np.ndarray | None,
    regions: np.ndarray | None,
    steps: int,
    reset: bool,
    device: str,
    settings: dict[str, Any],
    live: bool = False,
) -> Job:
    """Train (or continue) a counter; returns its summary."""
    from ..core.limits import check_training
    from ..counting import train_counter_iter

    check_training(steps, settings)
    if live:
        settings = {**settings, "updates": ctx.pull, "update_every": 25}
    counter = yield from train_counter_iter(
        image,
        points,
        name=name,
        background=background,
        regions=regions,
        steps=steps,
        reset=reset,
        device=device,
        cancel=ctx.cancel,
        **settings,
    )
    ctx.cache["counter"] = ((*_version(name), device), counter)
    return {
        "name": counter.name,
        "device": str(counter.device),
        "train_diameter": float(counter.config.train_diameter),
        "info": {k: v for k, v in counter.info.items() if k != "losses"},
    }


def _counter(ctx: JobContext, name: str, device: str) -> Job:
    from ..counting import load_counter

    key = (*_version(name), device)
    if ctx.cache.get("counter", (None,))[0] != key:
        yield Progress(0, 0, f"Loading counter '{name}'")
    return _cached(ctx, "counter", key, lambda: load_counter(name, device))


def count(ctx: JobContext, name: str, device: str, image: np.ndarray) -> Job:
    """Count the cells of one 2D image (a ``CountResult``)."""
    counter = yield from _counter(ctx, name, device)
    yield Progress(0, 1, "Counting")
    return counter.count(np.asarray(image))


def where_to_click(
    ctx: JobContext,
    name: str,
    device: str,
    image: np.ndarray,
    points: np.ndarray | None = None,
    background: np.ndarray | None = None,
) -> Job:
    """Where the counter's 8 views of an image disagree (a ``ClickUncertainty``); places
    near given ``points`` or on painted ``background`` are left out."""
    from ..counting.uncertainty import click_uncertainty_iter

    counter = yield from _counter(ctx, name, device)
    return (
        yield from click_uncertainty_iter(
            counter, np.asarray(image), points, background, cancel=ctx.cancel
        )
    )


def count_folder(ctx: JobContext, name: str, device: str, folder: str, out: str) -> Job:
    """Count every image of a folder; write counts.json, counts.csv and overlays."""
    from ..counting import count_folder_iter

    counter = yield from _counter(ctx, name, device)
    return (yield from count_folder_iter(counter, Path(folder), Path(out), cancel=ctx.cancel))


def segment_layer(
    ctx: JobContext,
    model: str,
    image: Any,
    rgb: bool,
    name: str,
    block: int,
    diameter: float | None,
    pixel_size: float | None,
) -> Job:
    """Segment an image block by block, with per-object measurements: the
    ``BlockwiseResult`` and its table."""
    from ..formats.image_sources import open_image
    from ..scale.batch import worker_model
    from ..scale.block_measure import BlockMeasurements
    from ..scale.blockwise import ModelSegmenter, segment_blockwise

    source = open_image(image, axes="YXC" if rgb else None, name=name)
    yield Progress(0, 1, "Loading the model")
    segmenter = ModelSegmenter(worker_model(model), source, diameter)
    measurements = BlockMeasurements(source, pixel_size=pixel_size)
    result = yield from segment_blockwise(
        source,
        segmenter,
        block=block,
        halo=segmenter.halo,
        sinks=[measurements],
        cancel=ctx.cancel,
    )
    return result, measurements.table


def batch(
    ctx: JobContext,
    items: list[Any],
    model: str,
    options: Any,
    scheduler: str | None,
    workers: int,
) -> Job:
    """Segment many images block by block on Dask (a local cluster of worker processes
    by default), writing masks, tables and GeoJSON; a ``BatchSummary``."""
    from ..scale.batch import run_batch

    return (
        yield from run_batch(
            items, model, options, scheduler=scheduler, workers=workers, cancel=ctx.cancel
        )
    )


def export_bioimageio(
    ctx: JobContext,
    name: str,
    out: str,
    image: np.ndarray | None = None,
    diameter: float | None = None,
) -> Job:
    """Write stored model ``name`` as a bioimage.io package at ``out``; returns the path."""
    from ..training.bioimage_io import export_model

    yield Progress(0, 1, f"Exporting {name!r} to bioimage.io")
    path = export_model(name, out, image=image, diameter=diameter)
    yield Progress(1, 1, f"Wrote {path.name}")
    return str(path)


JOBS: dict[str, Callable[..., Job]] = {
    "echo": echo,
    "devices": devices,
    "prepare": prepare,
    "train": train,
    "predict": predict,
    "where_next": where_next,
    "train_counter": train_counter,
    "count": count,
    "count_folder": count_folder,
    "where_to_click": where_to_click,
    "segment_layer": segment_layer,
    "batch": batch,
    "export_bioimageio": export_bioimageio,
}
