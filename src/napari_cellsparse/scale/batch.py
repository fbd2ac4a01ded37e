"""A trained model over many images: one task per image on Dask, resumable, failure-tolerant.

:func:`run_batch` sends one task per image (:func:`process_item`) to a Dask cluster: a
``LocalCluster`` of single-threaded worker processes by default, or any running scheduler
given by its address (one started by ``dask scheduler``, dask-jobqueue on Slurm,
dask-kubernetes...); ``scheduler="none"`` runs the same tasks in this process. Each worker
process loads the model once and reuses it for all its images. Every image is segmented
block-wise (so a slide never has to fit in memory), and its outputs are written to temporary
names and renamed, so a file that exists is complete: re-running skips images whose outputs
all exist. A file that fails (unreadable, wrong channels, a worker that died) is reported in
the summary and the rest goes on.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError, CellsparseError
from ..core.progress import Progress, check_cancel, run_sync
from ..formats.image_sources import open_image
from .block_measure import BlockMeasurements, PairedMeasurements
from .blockwise import ModelSegmenter, segment_to_file
from .workspace import BatchItem

__all__ = ["BatchOptions", "BatchSummary", "ItemResult", "process_item", "run_batch"]

NO_DASK = "none"
POLL_S = 0.5  # how often a running batch looks at its cancel event


@dataclass(frozen=True)
class BatchOptions:
    """How every image of a batch is processed."""

    block: int = 1024
    halo: int | None = None  # None: three cell diameters
    diameter: float | None = None  # None: estimated per image
    pixel_size: float | None = None  # None: from the image's metadata
    channel_names: tuple[str, ...] | None = None
    level: int = 0  # resolution level of OME-Zarr inputs (0 = full resolution)


@dataclass
class ItemResult:
    """What happened to one image."""

    image: str
    status: str  # "done", "skipped" or "failed"
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None
    outputs: list[str] = field(default_factory=list)


@dataclass
class BatchSummary:
    """All images of a batch: done, skipped (already done) and failed, with the reasons."""

    results: list[ItemResult]
    seconds: float
    scheduler: str

    def of(self, status: str) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "seconds": round(self.seconds, 3),
            "done": len(self.of("done")),
            "skipped": len(self.of("skipped")),
            "failed": len(self.of("failed")),
            "images": [asdict(r) for r in self.results],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Save :meth:`to_dict` as JSON (atomically)."""
        from ..models.store import write_json

        write_json(Path(path), self.to_dict())
        return Path(path)


# One model per worker process, loaded by the first task that needs it. Keyed by the folder
# of the model's current version (and the time its metadata was written, for a model reset
# and trained again under the same name), so a retrained model is loaded again.
_MODELS: dict[tuple[str, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(folder: str | os.PathLike[str]) -> Any:
    """The model of ``folder``, loaded once per process (thread-safe)."""
    from ..models.store import METADATA_FILE, current_folder
    from ..training import load_model

    current = current_folder(Path(folder))
    meta = current / METADATA_FILE
    key = (str(current.resolve()), meta.stat().st_mtime_ns if meta.exists() else 0)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(folder)
        return _MODELS[key]


def process_item(
    item: BatchItem, model_folder: str, options: BatchOptions = BatchOptions()
) -> ItemResult:
    """Segment one image block-wise and write its mask, table and GeoJSON (a Dask task).

    Errors are caught and returned in the result, so one bad file never stops a batch.
    """
    started = time.perf_counter()
    try:
        for output in item.outputs:
            output.parent.mkdir(parents=True, exist_ok=True)
        model = worker_model(model_folder)
        with open_image(item.image, level=options.level) as source:
            segmenter = ModelSegmenter(model, source, options.diameter)
            halo = options.halo if options.halo is not None else segmenter.halo
            table_sink, features_sink = _sinks(item, source, options)
            sinks = list(dict.fromkeys(s for s in (table_sink, features_sink) if s is not None))
            result = run_sync(
                segment_to_file(
                    source,
                    segmenter,
                    item.labels,
                    options.block,
                    halo,
                    sinks=sinks,
                    pixel_size=options.pixel_size,
                )
            )
        if table_sink is not None:
            from ..formats.tables import write_table

            write_table(table_sink.table, item.table)
        if features_sink is not None:
            from ..formats.geojson import write_features

            write_features(item.geojson, features_sink.features)
        return ItemResult(
            str(item.image),
            "done",
            result.n_objects,
            time.perf_counter() - started,
            outputs=[str(p) for p in item.outputs],
        )
    except Exception as err:
        return ItemResult(
            str(item.image), "failed", seconds=time.perf_counter() - started, error=_reason(err)
        )


def _sinks(
    item: BatchItem, source: Any, options: BatchOptions
) -> tuple[BlockMeasurements | PairedMeasurements | None, BlockMeasurements | None]:
    """The sinks of one image's outputs: its table (per block, or paired with a partner
    mask when one exists) and its GeoJSON features (measured when the table is per block)."""
    common: dict[str, Any] = {
        "pixel_size": options.pixel_size,
        "channel_names": options.channel_names,
    }
    partner = item.nuclei or item.cells
    if item.table is not None and partner is not None and partner.exists():
        made = "cells" if item.nuclei is not None else "nuclei"
        paired = PairedMeasurements(source, partner, made, **common)
        features = BlockMeasurements(source, table=False, features=True, **common)
        return paired, (features if item.geojson is not None else None)
    if item.table is None and item.geojson is None:
        return None, None
    blocks = BlockMeasurements(
        source, table=item.table is not None, features=item.geojson is not None, **common
    )
    return (blocks if item.table is not None else None), (
        blocks if item.geojson is not None else None
    )


def _reason(err: BaseException) -> str:
    if isinstance(err, CellsparseError):
        return str(err)
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
    return f"{type(err).__name__}: {err}{where}"


def run_batch(
    items: Sequence[BatchItem],
    model_folder: str | os.PathLike[str],
    options: BatchOptions = BatchOptions(),
    scheduler: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    resume: bool = True,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, BatchSummary]:
    """Process ``items`` with the model in ``model_folder``; yields progress per image.

    ``scheduler``: None starts a ``LocalCluster`` of ``workers`` processes with
    ``threads_per_worker`` threads each; an address (``tcp://host:8786``) uses that
    scheduler's workers; ``"none"`` runs in this process without Dask. ``resume`` skips
    images whose outputs all exist.
    """
    from ..models.store import METADATA_FILE, current_folder, read_json, resolve_model_folder

    started = time.perf_counter()
    folder = str(resolve_model_folder(model_folder))
    read_json(current_folder(Path(folder)) / METADATA_FILE)  # a missing or damaged model fails here
    results: dict[int, ItemResult] = {}
    todo = []
    for k, item in enumerate(items):
        if resume and item.done():
            results[k] = ItemResult(
                str(item.image), "skipped", outputs=[str(p) for p in item.outputs]
            )
        else:
            todo.append(k)
    total = len(items)
    yield Progress(len(results), total, f"{len(todo)} image(s) to process, {len(results)} done")
    if scheduler == NO_DASK:
        for k in todo:
            check_cancel(cancel)
            results[k] = process_item(items[k], folder, options)
            yield Progress(len(results), total, _message(results[k]))
        name = "this process"
    else:
        name = yield from _on_dask(
            items, todo, folder, options, scheduler, workers, threads_per_worker, results, cancel
        )
    ordered = [results[k] for k in range(total)]
    return BatchSummary(ordered, time.perf_counter() - started, name)


def _message(result: ItemResult) -> str:
    name = Path(result.image).name
    if result.status == "failed":
        return f"{name}: failed ({result.error})"
    return f"{name}: {result.objects} objects"


def _on_dask(
    items: Sequence[BatchItem],
    todo: list[int],
    folder: str,
    options: BatchOptions,
    scheduler: str | None,
    workers: int,
    threads_per_worker: int,
    results: dict[int, ItemResult],
    cancel: threading.Event | None,
) -> Generator[Progress, None, str]:
    """Run the ``todo`` items as Dask tasks; fill ``results``; return the scheduler's name."""
    try:
        from distributed import Client, LocalCluster, wait
    except ImportError as err:
        from ..core.errors import BackendUnavailableError

        raise BackendUnavailableError("Dask distributed (module distributed)", "scale") from err
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise BadInputError(
                f"Could not reach the Dask scheduler at {scheduler}: {err}"
            ) from err
    else:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
    name = scheduler or f"LocalCluster({workers} workers x {threads_per_worker} threads)"
    total = len(items)
    try:
        if not todo:
            return name
        futures = client.map(
            process_item,
            [items[k] for k in todo],
            model_folder=folder,
            options=options,
            pure=False,
        )
        index = {f.key: k for f, k in zip(futures, todo, strict=True)}
        pending = set(futures)
        message = f"Running on {name}"
        while pending:
            if cancel is not None and cancel.is_set():
                client.cancel(list(pending))
                check_cancel(cancel)
            try:
                finished, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                yield Progress(len(results), total, message)  # a chance to cancel
                continue
            for future in finished:
                k = index[future.key]
                try:
                    results[k] = future.result()
                except Exception as err:  # the task's worker died (KilledWorker) or was lost
                    results[k] = ItemResult(str(items[k].image), "failed", error=_reason(err))
                message = _message(results[k])
                yield Progress(len(results), total, message)
        return name
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
