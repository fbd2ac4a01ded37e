"""Block-wise instance segmentation: any segmenter over images larger than memory allows.

The image is cut into blocks (:func:`~napari_cellsparse.core.tiling.block_grid`) whose cores tile
it; each block is segmented with a halo of context around its core, and keeps only the
objects whose centre lies in its core, with all of their pixels (halo included). So an
object on a block border is neither cut (its owner saw it whole, when the halo is wider than
the largest object) nor duplicated (exactly one core holds its centre), and the result
matches segmenting the whole image at once. Ids are given in block order and are unique
over the image. The output is written block by block into any array that slices (numpy,
zarr); files are written to a temporary name and renamed when complete.

What else a run makes of its objects (measurements, GeoJSON features: see
:mod:`napari_cellsparse.scale.block_measure`) goes through :class:`BlockSink` objects: each
finished block hands its new objects to every sink, which keeps what it needs, so this
module knows nothing of tables or file formats.

Memory grows with the block size, not the image size: one block of input (image dtype),
its float32 model input and its labels are in memory at a time. Models see one
normalisation (the percentiles of the whole image, sampled) and one cell diameter for all
blocks, so every block is treated like a piece of the whole.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from skimage.measure import regionprops_table

from ..core.errors import BadInputError
from ..core.images import is_flat, stretch
from ..core.paths import atomic_target
from ..core.progress import Progress, check_cancel
from ..core.tiling import Block, Region, block_grid
from ..formats.image_sources import ImageSource
from ..formats.ome_zarr import (
    PYRAMID_MIN_SIDE,
    is_ome_zarr_path,
    open_label_level,
    writing_label_pyramid,
)

if TYPE_CHECKING:
    from ..training.model import TrainedModel

__all__ = [
    "BlockObjects",
    "BlockSink",
    "BlockwiseResult",
    "ModelSegmenter",
    "Segmenter",
    "create_labels_array",
    "segment_blockwise",
    "segment_to_file",
    "segment_to_ome_zarr",
]

Segmenter = Callable[[np.ndarray], np.ndarray]
"""Raw YXC pixels of one block (the image's dtype) -> int labels of the same YX shape."""

LABEL_DTYPE = np.int32
TIFF_TILE = 512


@dataclass
class BlockwiseResult:
    """What a block-wise run made: the labels array and what it found."""

    labels: Any
    n_objects: int
    blocks: int
    cut_objects: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class BlockObjects:
    """One finished block's own objects, as a :class:`BlockSink` receives them.

    ``labels`` is the window ``region`` of the output (the block with its halo) holding only
    this block's objects, under their global ``ids`` (sorted), 0 elsewhere; ``pixels`` the
    raw image window (YXC, the image's dtype) they were segmented from.
    """

    labels: np.ndarray
    ids: np.ndarray
    region: Region
    pixels: np.ndarray


class BlockSink(Protocol):
    """Accumulates what it wants of a block-wise run, block by block."""

    def add(self, objects: BlockObjects) -> None:
        """Take one block's new objects (called only for blocks that found some)."""

    def finish(self, labels: Any) -> None:
        """The run is complete: ``labels`` is the whole output array (still readable)."""


HALO_DIAMETERS = 3.0  # the default context around each block, in cell diameters


class ModelSegmenter:
    """A trained model as a :data:`Segmenter` for the blocks of one image.

    The intensity ranges come from the whole image (sampled) and the cell diameter is given
    or estimated once on a window at the image centre, so all blocks are predicted alike.
    """

    def __init__(
        self, model: TrainedModel, source: ImageSource, diameter: float | None = None
    ) -> None:
        if source.n_channels != model.n_channels:
            raise BadInputError(
                f"The model was trained on {model.n_channels}-channel images; "
                f"{source.name} has {source.n_channels} channel(s)."
            )
        if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
            raise BadInputError(f"The diameter must be a positive number, got {diameter!r}.")
        self.model = model
        self.ranges = source.ranges()
        self.diameter = float(diameter) if diameter is not None else self._estimate(source)

    def _estimate(self, source: ImageSource, window: int = 2048) -> float:
        h, w = source.shape
        y0, x0 = max(0, (h - window) // 2), max(0, (w - window) // 2)
        pixels = source.read(Region(y0, x0, min(h, y0 + window), min(w, x0 + window)))
        return self.model.estimate_diameter(stretch(pixels, *self.ranges))

    @property
    def halo(self) -> int:
        """Context around each block: three cell diameters (at least 32 pixels), so an
        object owned by a block lies inside what the block saw, with context around it.
        The networks' outputs still change with context two diameters away: a small U-Net's
        outlines at a region level of 0.7 matched the whole image's at IoU 0.9 for 68 of 70
        generated nuclei with two diameters of halo, 70 of 70 with three."""
        return max(32, math.ceil(HALO_DIAMETERS * self.diameter))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if is_flat(pixels):
            return np.zeros(pixels.shape[:2], LABEL_DTYPE)
        return self.model.predict_normalized(stretch(pixels, *self.ranges), self.diameter)


def create_labels_array(shape: tuple[int, int], path: Path | None = None, chunk: int = 1024) -> Any:
    """An all-zero int32 label array: in memory, or a chunked zarr array at ``path``."""
    if path is None:
        return np.zeros(shape, LABEL_DTYPE)
    import zarr

    return zarr.open_array(
        str(path), mode="w", shape=shape, chunks=(chunk, chunk), dtype=LABEL_DTYPE, fill_value=0
    )


def _owned(
    labels: np.ndarray, block: Block, image_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Ids (of ``labels``, the block's pixels) whose centre lies in the block's core, and
    for each whether it touches a side where the block stops short of the image edge (the
    halo was too small to see it whole)."""
    if not labels.any():
        return np.zeros(0, np.int64), np.zeros(0, bool)
    props = regionprops_table(labels, properties=("label", "centroid", "bbox"))
    outer = block.outer
    keep = np.array(
        [
            block.owns(y + outer.y0, x + outer.x0)
            for y, x in zip(props["centroid-0"], props["centroid-1"], strict=True)
        ],
        dtype=bool,
    )
    h, w = labels.shape
    cut = np.zeros(len(keep), bool)
    if outer.y0 > 0:
        cut |= props["bbox-0"] == 0
    if outer.x0 > 0:
        cut |= props["bbox-1"] == 0
    if outer.y1 < image_shape[0]:
        cut |= props["bbox-2"] == h
    if outer.x1 < image_shape[1]:
        cut |= props["bbox-3"] == w
    return props["label"][keep], cut[keep]


def segment_blockwise(
    source: ImageSource,
    segment: Segmenter,
    out: Any | None = None,
    block: int = 1024,
    halo: int = 64,
    sinks: Sequence[BlockSink] = (),
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, BlockwiseResult]:
    """Segment ``source`` block by block into ``out`` (default: a new in-memory array).

    Each block's new objects go to every one of ``sinks`` (:meth:`BlockSink.add`), and each
    sink's :meth:`BlockSink.finish` is called once the labels are complete.
    """
    started = time.perf_counter()
    if out is None:
        out = create_labels_array(source.shape)
    if tuple(out.shape) != tuple(source.shape):
        raise BadInputError(f"The output has shape {out.shape}, the image {source.shape}.")
    blocks = block_grid(source.shape, block, halo)
    next_id = 1
    cut_objects = 0
    yield Progress(0, len(blocks), f"{source.name}: {len(blocks)} block(s)")
    for k, blk in enumerate(blocks, start=1):
        check_cancel(cancel)
        pixels = source.read(blk.outer)
        labels = np.asarray(segment(pixels))
        if labels.shape != pixels.shape[:2]:
            raise BadInputError(
                f"The segmenter returned labels of shape {labels.shape} for a block of "
                f"shape {pixels.shape[:2]}."
            )
        ids, cut = _owned(labels, blk, source.shape)
        cut_objects += int(cut.sum())
        if len(ids):
            new_ids = np.arange(next_id, next_id + len(ids), dtype=LABEL_DTYPE)
            next_id += len(ids)
            lut = np.zeros(int(labels.max()) + 1, LABEL_DTYPE)
            lut[ids] = new_ids
            mine = lut[labels]
            region = np.asarray(out[blk.outer.slices])
            free = (mine > 0) & (region == 0)
            region[free] = mine[free]
            out[blk.outer.slices] = region
            if sinks:  # the block's own objects, alone (others may share its window)
                written = np.where(np.isin(region, new_ids), region, 0)
                objects = BlockObjects(written, new_ids, blk.outer, pixels)
                for sink in sinks:
                    sink.add(objects)
        yield Progress(k, len(blocks), f"{source.name}: block {k}/{len(blocks)}")
    for sink in sinks:
        sink.finish(out)
    return BlockwiseResult(
        out, next_id - 1, len(blocks), cut_objects, time.perf_counter() - started
    )


def write_tiff_tiled(labels: Any, path: Path, tile: int = TIFF_TILE) -> Path:
    """Write a 2D label array (numpy or zarr) to a tiled, compressed TIFF, one tile row at a
    time (never the whole image in memory); atomically (temporary name, then rename)."""
    import tifffile

    h, w = (int(n) for n in labels.shape)
    dtype = np.dtype(labels.dtype)

    def tiles() -> Generator[np.ndarray, None, None]:
        for y in range(0, h, tile):
            row = np.asarray(labels[y : y + tile, :])
            for x in range(0, w, tile):
                piece = np.zeros((tile, tile), dtype)
                part = row[:, x : x + tile]
                piece[: part.shape[0], : part.shape[1]] = part
                yield piece

    with atomic_target(path) as temp:
        tifffile.imwrite(
            temp,
            tiles(),
            shape=(h, w),
            dtype=dtype,
            tile=(tile, tile),
            compression="zlib",
            bigtiff=h * w * dtype.itemsize > 2**31,
            photometric="minisblack",
        )
    return path


def segment_to_file(
    source: ImageSource,
    segment: Segmenter,
    path: str | os.PathLike[str],
    block: int = 1024,
    halo: int = 64,
    cancel: threading.Event | None = None,
    sinks: Sequence[BlockSink] = (),
    pixel_size: float | None = None,
    min_side: int = PYRAMID_MIN_SIDE,
) -> Generator[Progress, None, BlockwiseResult]:
    """:func:`segment_blockwise` into a file: ``.zarr`` (chunked), ``.ome.zarr`` (OME-Zarr
    labels with a pyramid, :mod:`napari_cellsparse.formats.ome_zarr`) or ``.tif`` (tiled).

    The labels go to a temporary zarr next to ``path``; a TIFF is then written from it tile
    row by tile row. ``path`` appears only once complete (temporary name, then rename), so
    an interrupted run leaves no file that looks finished. ``pixel_size`` and ``min_side``
    are those of an OME-Zarr's pyramid (:func:`segment_to_ome_zarr`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise BadInputError(f"Labels are written as .zarr, .ome.zarr or .tif, not {path.name}.")
    if is_ome_zarr_path(path):
        return (
            yield from segment_to_ome_zarr(
                source, segment, path, block, halo, cancel, min_side, sinks, pixel_size
            )
        )
    chunk = min(block, 4096)
    if suffix == ".zarr":
        with atomic_target(path) as store:
            out = create_labels_array(source.shape, store, chunk)
            result = yield from segment_blockwise(source, segment, out, block, halo, sinks, cancel)
        import zarr

        result.labels = zarr.open_array(str(path), mode="r")
        return result
    scratch = path.with_name(f".{path.name}.{os.getpid()}.blocks.zarr")
    try:
        out = create_labels_array(source.shape, scratch, chunk)
        result = yield from segment_blockwise(source, segment, out, block, halo, sinks, cancel)
        write_tiff_tiled(out, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.labels = path
    return result


def segment_to_ome_zarr(
    source: ImageSource,
    segment: Any,
    path: str | os.PathLike[str],
    block: int = 1024,
    halo: int = 64,
    cancel: threading.Event | None = None,
    min_side: int = PYRAMID_MIN_SIDE,
    sinks: Sequence[BlockSink] = (),
    pixel_size: float | None = None,
) -> Generator[Progress, None, BlockwiseResult]:
    """:func:`segment_blockwise` into an OME-Zarr label image with a pyramid, its scale
    ``pixel_size`` µm (default: the image's).

    Returns the block-wise result, its ``labels`` the level-0 array (read-only).
    """
    with writing_label_pyramid(path, source.shape, block, LABEL_DTYPE, min_side) as pyramid:
        result = yield from segment_blockwise(
            source, segment, pyramid.level0, block, halo, sinks, cancel
        )
        pixel_size = pixel_size or source.pixel_size
        yield from pyramid.finish(pixel_size, cancel, source.name)
    result.labels = open_label_level(path)
    return result
