"""Images read a region at a time: TIFF / OME-TIFF, zarr, and arrays already in memory.

A whole-slide image does not fit in memory as floats, so the block-wise and batch code never
asks for all of it: an :class:`ImageSource` hands out one rectangle at a time as YXC. An
uncompressed TIFF is memory-mapped; a compressed or tiled one is read tile by tile through
tifffile's zarr store; a ``.zarr`` folder (plain or OME-Zarr, level 0) through zarr; numpy,
dask and zarr arrays (a napari layer's data) are sliced as they are.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from ..core.errors import BadInputError, CellsparseError
from ..core.images import MAX_CHANNELS, guess_axes, percentile_ranges, sample_grid
from ..core.tiling import Region

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSource",
    "image_stem",
    "is_image_file",
    "open_image",
    "pixel_size_from_tiff",
    "read_image_file",
    "reading_image",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".png", ".jpg", ".jpeg")


@contextmanager
def reading_image(what: str | os.PathLike[str]) -> Iterator[None]:
    """Turn any failure to read or decode the image ``what`` (truncated, corrupted, not an
    image at all) into one :class:`BadInputError` naming it: the one translation of every
    reader here, whether it reads a whole file or, lazily, one region of it."""
    try:
        yield
    except CellsparseError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"Could not read the image {what}: {reason}") from err


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has a name this module can open (``.ome.tif`` included)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class ImageSource:
    """A 2D image (YX, YXC or CYX, channels at most 4) that is read one region at a time."""

    def __init__(
        self,
        array: Any,
        axes: str | None = None,
        name: str = "image",
        pixel_size: float | None = None,
        closer: Any = None,
        origin: str | os.PathLike[str] | None = None,
    ) -> None:
        shape = tuple(int(n) for n in array.shape)
        axes = (axes or guess_axes(shape)).upper()
        if sorted(axes) not in (["X", "Y"], ["C", "X", "Y"]) or len(axes) != len(shape):
            raise BadInputError(
                f"Block-wise processing needs a 2D image (YX, YXC or CYX); got shape {shape} "
                f"with axes {axes!r}. For a stack, process one slice at a time."
            )
        dtype = np.dtype(array.dtype)
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise BadInputError(f"Images must be integer or floating point, not {dtype}.")
        self.array = array
        self.axes = axes
        self.name = name
        self.pixel_size = pixel_size
        self.dtype = dtype
        self.shape: tuple[int, int] = (shape[axes.index("Y")], shape[axes.index("X")])
        self.n_channels = shape[axes.index("C")] if "C" in axes else 1
        if self.n_channels > MAX_CHANNELS:
            raise BadInputError(
                f"{name}: {self.n_channels} channels; at most {MAX_CHANNELS} are supported."
            )
        if min(self.shape) < 2:
            raise BadInputError(f"{name} is too small to segment: shape {shape}.")
        self._closer = closer
        self.origin = str(origin) if origin is not None else name

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, shape={self.shape}, channels={self.n_channels})"

    def _yxc(self, data: Any) -> np.ndarray:
        data = np.asarray(data)
        if self.axes == "YX":
            return data[..., None]
        if self.axes == "CYX":
            return np.moveaxis(data, 0, -1)
        return data

    def _index(self, ys: slice, xs: slice) -> tuple[slice, ...]:
        return {"YX": (ys, xs), "YXC": (ys, xs, slice(None)), "CYX": (slice(None), ys, xs)}[
            self.axes
        ]

    def read(self, region: Region) -> np.ndarray:
        """The pixels of ``region`` as a YXC array of the image's own dtype."""
        with reading_image(self.origin):
            return self._yxc(self.array[self._index(*region.slices)])

    def read_all(self) -> np.ndarray:
        """All pixels as YXC (for images known to fit in memory, e.g. label masks)."""
        return self.read(Region(0, 0, *self.shape))

    def sample(self, max_pixels: int = 4_000_000) -> np.ndarray:
        """Every k-th row and column (YXC), at most about ``max_pixels`` pixels."""
        with reading_image(self.origin):
            if self.axes == "CYX":
                h, w = self.shape
                step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
                return self._yxc(self.array[:, ::step, ::step])
            return self._yxc(sample_grid(self.array, max_pixels))

    def ranges(self, max_pixels: int = 4_000_000) -> np.ndarray:
        """Per-channel 1st / 99.8th percentiles (2 x C) of the whole image (sampled)."""
        return percentile_ranges(self.sample(max_pixels))

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(
    image: str | os.PathLike[str] | Any,
    axes: str | None = None,
    name: str | None = None,
    level: int = 0,
) -> ImageSource:
    """An :class:`ImageSource` for a file path or an array (numpy, dask, zarr).

    Files are opened lazily: nothing but the metadata is read until a region is asked for.
    ``level`` picks a resolution level of an OME-Zarr image (0 = full resolution).
    """
    if not isinstance(image, (str, os.PathLike)):
        return ImageSource(image, axes, name or "image")
    path = Path(image)
    label = name or path.name
    if not path.exists():
        raise BadInputError(f"The image {path} does not exist.")
    suffix = path.suffix.lower()
    with reading_image(path):
        if _is_ome_zarr(path):
            from .ome_zarr import open_ome_zarr

            return open_ome_zarr(path, level, axes, label)
        if level:
            raise BadInputError(f"{path.name} has one resolution level; level {level} was asked.")
        if suffix in (".tif", ".tiff"):
            return _open_tiff(path, axes, label)
        if suffix == ".zarr" or path.is_dir():
            return ImageSource(_open_zarr(path), axes, label, origin=path)
        from skimage.io import imread

        return ImageSource(np.asarray(imread(path)), axes, label, origin=path)


def _is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr image (a zarr group with multiscales metadata)."""
    if not path.is_dir():
        return False
    from .ome_zarr import is_ome_zarr

    return is_ome_zarr(path)


def read_image_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A whole image file in memory, in its own axes (TIFF with tifffile, the rest with
    scikit-image), with a clear message when it is missing, unreadable or empty."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"The image file {path} is a folder, not an image file.")
    if not path.is_file():
        raise BadInputError(f"The image file {path} does not exist.")
    with reading_image(path):
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = np.asarray(tifffile.imread(path))
        else:
            from skimage.io import imread

            image = np.asarray(imread(path))
    if image.size == 0:
        raise BadInputError(f"Could not read the image {path}: it holds no pixels.")
    return image


def _open_tiff(path: Path, axes: str | None, name: str) -> ImageSource:
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        series_axes = series.axes.replace("S", "C")
        sizes = zip(series_axes, series.shape, strict=True)
        keep = [i for i, (a, n) in enumerate(sizes) if n > 1 or a in "YX"]
        found_axes = "".join(series_axes[i] for i in keep)
        if axes is None and set(found_axes) <= set("YXC"):
            axes = found_axes
        pixel_size = _tiff_pixel_size(tif)
        try:
            array: Any = tifffile.memmap(path, mode="r", series=0)
            closer = None
        except ValueError:
            import zarr

            store = tif.aszarr(series=0, level=0)
            array = zarr.open(store, mode="r")
            closer = store
        if len(keep) != array.ndim:
            array = _Squeezed(array, keep)
        return ImageSource(array, axes, name, pixel_size, closer=_Closer(tif, closer), origin=path)
    except Exception:
        tif.close()
        raise


class _Squeezed:
    """An array view without its axes of length one (kept: ``keep``), sliced lazily."""

    def __init__(self, array: Any, keep: Sequence[int]) -> None:
        self.array, self.keep = array, list(keep)
        self.shape = tuple(array.shape[i] for i in self.keep)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        full: list[Any] = [0] * self.array.ndim
        for i, part in zip(self.keep, index, strict=True):
            full[i] = part
        return np.asarray(self.array[tuple(full)])


class _Closer:
    def __init__(self, *things: Any) -> None:
        self.things = [t for t in things if t is not None]

    def close(self) -> None:
        for thing in self.things:
            thing.close()


def _open_zarr(path: Path) -> Any:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):
        datasets = node.attrs.get("multiscales", [{}])[0].get("datasets", [])
        key = datasets[0]["path"] if datasets else "0"
        if key not in node:
            raise BadInputError(f"{path} is a zarr group without an image array ({key!r}).")
        node = node[key]
    return node


# -- pixel size ---------------------------------------------------------------------------------

# µm per unit (OME units, TIFF/ImageJ spellings)
UNITS_UM = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "in": 25_400.0,
    "inch": 25_400.0,
}
# Resolutions image editors write by default: they say nothing about the specimen.
DOCUMENT_DPI = (72.0, 96.0)


def _ome_pixel_size(xml: str) -> float | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        log.warning("unreadable OME-XML; no pixel size taken from it")
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels" or "PhysicalSizeX" not in element.attrib:
            continue
        unit = element.attrib.get("PhysicalSizeXUnit", "µm")
        scale = UNITS_UM.get(unit)
        try:
            size = float(element.attrib["PhysicalSizeX"])
        except ValueError:
            return None
        if scale is None or not size > 0:
            log.warning("OME pixel size %s %s not understood", size, unit)
            return None
        return size * scale
    return None


def _resolution_pixel_size(page: Any, imagej: Mapping[str, Any] | None) -> float | None:
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    numerator, denominator = tag.value
    if not numerator or not denominator:
        return None
    per_unit = numerator / denominator  # pixels per unit
    unit_tag = page.tags.get("ResolutionUnit")
    code = int(unit_tag.value) if unit_tag is not None else 2
    if code == 2:
        if per_unit in DOCUMENT_DPI:
            return None
        unit = "inch"
    elif code == 3:
        unit = "cm"
    else:  # no unit in TIFF terms; ImageJ keeps the real one in its description
        unit = re.sub(r"\\u00[bB]5", "µ", str((imagej or {}).get("unit", "")))
    scale = UNITS_UM.get(unit)
    return None if scale is None else scale / per_unit


def pixel_size_from_tiff(path: str | os.PathLike) -> float | None:
    """µm per pixel of a TIFF: OME-XML ``PhysicalSizeX``, else its resolution tags, else None.

    Resolution tags count when their unit converts to µm (cm, inch, or ImageJ's unit such as
    ``micron``); 72 and 96 dpi are image-editor defaults, not a calibration, and give None.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    with reading_image(path), tifffile.TiffFile(path) as tif:
        return _tiff_pixel_size(tif)


def _tiff_pixel_size(tif: Any) -> float | None:
    """:func:`pixel_size_from_tiff` of an open ``tifffile.TiffFile``."""
    if tif.ome_metadata:
        size = _ome_pixel_size(tif.ome_metadata)
        if size is not None:
            return size
    return _resolution_pixel_size(tif.pages.first, tif.imagej_metadata)


def image_stem(path: Path) -> str:
    """A file name without its image extension (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for ending in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem
