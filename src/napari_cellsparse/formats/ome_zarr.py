"""OME-Zarr (NGFF 0.5): label images written block by block with a pyramid; images read at
any resolution level.

Labels: the block-wise labels go straight into level 0 of a zarr v3 group; each further level
takes every second row and column of the one before (nearest neighbour by subsampling: a
label is never averaged into an id that does not exist), computed one output chunk at a
time, so memory grows with the chunk size, not the image. The group carries the
``multiscales`` and ``image-label`` metadata (written with the ``ome-zarr`` package), so the
``ome-zarr`` reader and ``napari-ome-zarr`` open it as a labels layer. Level ``k`` has scale
``2**k`` times the pixel size and no translation: its pixel ``i`` is level 0's pixel
``i * 2**k``. The folder appears only once complete (temporary name, then rename).

Images: an OME-Zarr group (0.1 to 0.5) is opened at a chosen level as an
:class:`~napari_cellsparse.formats.image_sources.ImageSource`, with singleton axes (t, z)
dropped and the pixel size taken from that level's scale.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BackendUnavailableError, BadInputError
from ..core.paths import atomic_target
from ..core.progress import Progress, check_cancel
from .image_sources import ImageSource

__all__ = [
    "OME_ZARR_SUFFIX",
    "LabelPyramid",
    "is_ome_zarr",
    "is_ome_zarr_path",
    "open_label_level",
    "open_ome_zarr",
    "pyramid_shapes",
    "writing_label_pyramid",
]

OME_ZARR_SUFFIX = ".ome.zarr"
LABELS_NAME = "labels"
PYRAMID_MIN_SIDE = 256  # no further level once the longer side is at most this
MAX_LEVELS = 12
DOWNSAMPLE = 2
# µm per NGFF unit (UDUNITS-2 names, as NGFF axes metadata spells them)
NGFF_UNITS_UM = {
    "angstrom": 1e-4,
    "picometer": 1e-6,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
IMPLICIT_AXES = "tczyx"  # NGFF 0.1 / 0.2 have no axes metadata: 5D, in this order


def is_ome_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named as an OME-Zarr folder (``*.ome.zarr``)."""
    return Path(path).name.lower().endswith(OME_ZARR_SUFFIX)


def _ome_attrs(group: Any) -> dict[str, Any]:
    """NGFF metadata of a zarr group: under ``ome`` for zarr v3 (0.5), top level before."""
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr group with NGFF ``multiscales`` metadata."""
    path = Path(path)
    if not path.is_dir():
        return False
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:
        return False
    return isinstance(node, zarr.Group) and bool(_ome_attrs(node).get("multiscales"))


def pyramid_shapes(
    shape: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE
) -> list[tuple[int, int]]:
    """Level shapes: level 0 is ``shape``; each next level halves (rounding up) until the
    longer side is at most ``min_side``."""
    shapes = [tuple(int(n) for n in shape)]
    while max(shapes[-1]) > min_side and len(shapes) < MAX_LEVELS:
        h, w = shapes[-1]
        shapes.append((-(-h // DOWNSAMPLE), -(-w // DOWNSAMPLE)))
    return shapes  # type: ignore[return-value]


def _zarr() -> Any:
    try:
        import ome_zarr.writer  # noqa: F401
        import zarr
    except ImportError as err:
        raise BackendUnavailableError("OME-Zarr output (ome-zarr)", "scale", err) from err
    return zarr


def _downsample_level(source: Any, target: Any, chunk: int, cancel: Any) -> None:
    """``target`` = every second pixel of ``source``, one output chunk at a time."""
    h, w = target.shape
    for y0 in range(0, h, chunk):
        check_cancel(cancel)
        y1 = min(h, y0 + chunk)
        for x0 in range(0, w, chunk):
            x1 = min(w, x0 + chunk)
            window = np.asarray(
                source[DOWNSAMPLE * y0 : DOWNSAMPLE * y1, DOWNSAMPLE * x0 : DOWNSAMPLE * x1]
            )
            target[y0:y1, x0:x1] = window[::DOWNSAMPLE, ::DOWNSAMPLE]


def _write_metadata(group: Any, levels: int, pixel_size: float | None, name: str) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = FormatV05()
    unit = pixel_size if pixel_size else 1.0
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [unit * DOWNSAMPLE**k, unit * DOWNSAMPLE**k]}
            ],
        }
        for k in range(levels)
    ]
    axes: list[dict[str, str]] = [{"name": a, "type": "space"} for a in "yx"]
    if pixel_size:
        for axis in axes:
            axis["unit"] = "micrometer"
    write_multiscales_metadata(
        group,
        datasets,
        fmt=fmt,
        axes=axes,
        name=name,
        metadata={"method": "subsampling (every 2nd row and column; labels never interpolated)"},
    )
    add_metadata(group, {"image-label": {"version": fmt.version}}, fmt=fmt)


class LabelPyramid:
    """An OME-Zarr label image being written: the caller fills ``level0``, then :meth:`finish`
    computes the other levels and writes the metadata."""

    def __init__(self, group: Any, arrays: list[Any], chunk: int) -> None:
        self.group, self.arrays, self.chunk = group, arrays, chunk

    @property
    def level0(self) -> Any:
        return self.arrays[0]

    def finish(
        self, pixel_size: float | None, cancel: threading.Event | None, what: str
    ) -> Generator[Progress, None, None]:
        """Every further level from the one before, then the NGFF metadata."""
        levels = len(self.arrays)
        for k in range(1, levels):
            _downsample_level(self.arrays[k - 1], self.arrays[k], self.chunk, cancel)
            yield Progress(k, levels - 1, f"{what}: pyramid level {k}")
        _write_metadata(self.group, levels, pixel_size, LABELS_NAME)


@contextmanager
def writing_label_pyramid(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    block: int,
    dtype: Any,
    min_side: int = PYRAMID_MIN_SIDE,
) -> Iterator[LabelPyramid]:
    """A :class:`LabelPyramid` at ``path``, which appears only if the block completes."""
    zarr = _zarr()
    path = Path(path)
    chunk = max(16, min(block, 4096))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"Cannot write the labels to {path}: {err}") from err
    with atomic_target(path) as store:
        group = zarr.open_group(str(store), mode="w", zarr_format=3)
        arrays = [
            group.create_array(
                str(k),
                shape=level,
                chunks=(min(chunk, level[0]), min(chunk, level[1])),
                dtype=dtype,
                fill_value=0,
                dimension_names=["y", "x"],
            )
            for k, level in enumerate(pyramid_shapes(shape, min_side))
        ]
        yield LabelPyramid(group, arrays, chunk)


def open_label_level(path: str | os.PathLike[str], level: int = 0) -> Any:
    """One level of a written label pyramid, read-only."""
    return _zarr().open_array(str(Path(path) / str(level)), mode="r")


# -- reading -----------------------------------------------------------------------------------


def _axes(multiscale: dict[str, Any], ndim: int) -> list[tuple[str, str | None]]:
    """(letter, unit) per axis: Y, X, C, Z, T from names or types; NGFF 0.1/0.2 implicit."""
    declared = multiscale.get("axes")
    if declared is None:
        return [(a.upper(), None) for a in IMPLICIT_AXES[-ndim:]]
    found = []
    for axis in declared:
        if isinstance(axis, str):
            found.append((axis.upper(), None))
            continue
        kind, name = axis.get("type"), str(axis.get("name", "")).upper()
        letter = {"channel": "C", "time": "T"}.get(kind, name[:1] or "?")
        found.append((letter, axis.get("unit")))
    return found


def _level_pixel_size(dataset: dict[str, Any], units: dict[str, str | None]) -> float | None:
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale" and "scale" in transform:
            scale = transform["scale"][-1]
            factor = NGFF_UNITS_UM.get(units.get("X") or "")
            return float(scale) * factor if factor and scale > 0 else None
    return None


class _Selected:
    """An array without its singleton non-image axes (kept: ``keep``), sliced lazily."""

    def __init__(self, array: Any, keep: list[int]) -> None:
        self.array, self.keep = array, keep
        self.shape = tuple(array.shape[i] for i in keep)
        self.dtype = array.dtype
        self.ndim = len(keep)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        full: list[Any] = [0] * self.array.ndim
        for i, part in zip(self.keep, index, strict=True):
            full[i] = part
        return np.asarray(self.array[tuple(full)])


def open_ome_zarr(
    path: str | os.PathLike[str],
    level: int = 0,
    axes: str | None = None,
    name: str | None = None,
) -> ImageSource:
    """The resolution ``level`` (0 = full) of an OME-Zarr image as an image source."""
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    multiscales = _ome_attrs(group).get("multiscales") or []
    if not multiscales or not multiscales[0].get("datasets"):
        raise BadInputError(f"{path} has no OME-Zarr multiscales metadata.")
    multiscale = multiscales[0]
    datasets = multiscale["datasets"]
    if not isinstance(level, int) or not 0 <= level < len(datasets):
        raise BadInputError(
            f"{path.name} has {len(datasets)} resolution level(s) (0 to {len(datasets) - 1}); "
            f"level {level!r} does not exist."
        )
    key = datasets[level]["path"]
    if key not in group:
        raise BadInputError(f"{path.name}: level {level} ({key!r}) is missing.")
    array = group[key]
    described = _axes(multiscale, array.ndim)
    if len(described) != array.ndim:
        raise BadInputError(
            f"{path.name}: the metadata names {len(described)} axes, the array has {array.ndim}."
        )
    keep = [i for i, (letter, _) in enumerate(described) if letter in "YX" or array.shape[i] > 1]
    found = "".join(described[i][0] for i in keep)
    if axes is None and set(found) <= set("YXC"):
        axes = found
    units = {letter: unit for letter, unit in described}
    data = array if len(keep) == array.ndim else _Selected(array, keep)
    pixel_size = _level_pixel_size(datasets[level], units)
    return ImageSource(data, axes, name or path.name, pixel_size, origin=path)
