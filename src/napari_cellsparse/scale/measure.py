"""Per-cell measurements of a label image, in a table that reads like QuPath's.

Shapes and intensities come from :func:`skimage.measure.regionprops_table` (median and
standard deviation as its ``extra_properties``), one row per object, as a pandas DataFrame.

Column names follow QuPath's (``ObjectMeasurements`` since QuPath 0.6), so a table from
here and one exported from QuPath can be read by the same script:

- ``Image`` (when an image name is given), ``Object ID`` (the label id), ``Nucleus ID``
  (with a nucleus mask), ``Centroid X px``, ``Centroid Y px``.
- Shapes: ``Area px^2``, ``Perimeter px``, ``Major axis length px``, ``Minor axis length px``,
  ``Eccentricity``, ``Solidity``. QuPath measures the outline polygon and calls its
  perimeter "Length"; ours is scikit-image's pixel-based estimate, hence "Perimeter".
  The axis lengths are those of the ellipse with the object's second moments.
- Intensities per channel: ``<channel>: Mean``, ``: Median``, ``: Min``, ``: Max``,
  ``: Std.Dev.``. The standard deviation is the sample one (divides by n - 1, 0 for one
  pixel), as QuPath computes it. Channels are named ``Channel 1``, ``Channel 2``, ...
  (QuPath's default names, also for a single channel) unless ``channel_names`` is given.
- With a pixel size (µm per pixel) every length gets a ``µm`` twin and every area a
  ``µm^2`` twin next to the pixel column (``Centroid X µm``, ``Area µm^2``, ...).
- With a nucleus mask the table has QuPath's cell compartments: shapes and intensities
  prefixed ``Nucleus: `` and ``Cell: ``, the area and intensities of ``Cytoplasm: ``
  (the cell without its nucleus), and ``Nucleus/Cell area ratio``; for example
  ``Nucleus: Area µm^2``, ``Cytoplasm: DAPI: Mean``, ``Cell: DAPI: Std.Dev.``.

Centroids are in QuPath's frame (and the one of :mod:`napari_cellsparse.formats.geojson`): the
pixel in column 0 spans x from 0 to 1, so its centre is x = 0.5; napari's (data) coordinate
of a centroid is ``Centroid X px - 0.5``.

Cells and nuclei are paired as QuPath keeps them, one nucleus per cell: each nucleus
belongs to the cell it overlaps most, and a cell given several nuclei keeps the one it
overlaps most. A cell's nucleus compartment is that nucleus clipped to the cell; nucleus
pixels outside every cell and unpaired nuclei are not measured. A cell without a nucleus
has NaN nucleus columns, and its whole area is cytoplasm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import BadInputError
from ..core.images import numeric_image
from ..formats.tables import table_measurements

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "measure_objects",
    "measured_features",
]

UM = "µm"
COMPARTMENTS = ("Nucleus", "Cytoplasm", "Cell")

# regionprops name -> (QuPath-like name, power of the length unit: 0 none, 1 length, 2 area)
SHAPES = {
    "area": ("Area", 2),
    "perimeter": ("Perimeter", 1),
    "axis_major_length": ("Major axis length", 1),
    "axis_minor_length": ("Minor axis length", 1),
    "eccentricity": ("Eccentricity", 0),
    "solidity": ("Solidity", 0),
}
INTENSITIES = {
    "intensity_mean": "Mean",
    "pixel_median": "Median",
    "intensity_min": "Min",
    "intensity_max": "Max",
    "pixel_stddev": "Std.Dev.",
}


def pixel_median(regionmask: np.ndarray, intensity: np.ndarray) -> float:
    """Median of an object's pixel values (``regionprops`` extra property)."""
    return float(np.median(intensity[regionmask]))


def pixel_stddev(regionmask: np.ndarray, intensity: np.ndarray) -> float:
    """Sample standard deviation (n - 1) of an object's values, 0 for a single pixel."""
    values = intensity[regionmask]
    return float(np.std(values, ddof=1, dtype=np.float64)) if values.size > 1 else 0.0


# -- input checks ---------------------------------------------------------------------------


def _label_image(labels: Any, what: str) -> np.ndarray:
    data = np.asarray(labels)
    if data.ndim != 2:
        raise BadInputError(f"The {what} must be a 2D label image (YX); got shape {data.shape}.")
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        raise BadInputError(
            f"The {what} must hold whole numbers (one id per object), not {data.dtype}."
        )
    if data.size and data.min() < 0:
        raise BadInputError(f"The {what} has negative ids; objects are 1, 2, ... and 0 is none.")
    return data


def _intensity_image(intensity: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``intensity`` as YXC, checked against the labels' YX shape.

    Channels come last; a CYX image (as OME-TIFFs store them) is turned when its shape
    says so unambiguously.
    """
    data = numeric_image(intensity)
    if data.ndim == 2:
        data = data[..., None]
    elif data.ndim == 3 and data.shape[1:] == shape and data.shape[:2] != shape:
        data = np.moveaxis(data, 0, -1)
    if data.ndim != 3 or data.shape[:2] != shape:
        raise BadInputError(
            f"The intensity image {data.shape} does not match the labels {shape}: it must be "
            "YX or YXC (channels last) with the same height and width."
        )
    return data


def _channel_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"Channel {i + 1}" for i in range(count)]
    names = [str(n).strip() for n in names]
    if len(names) != count or not all(names) or len(set(names)) != count:
        raise BadInputError(
            f"Give {count} different channel name(s), one per channel; got {names}."
        )
    return names


# -- measuring --------------------------------------------------------------------------------


def _with_units(
    name: str, power: int, values: np.ndarray, pixel_size: float | None
) -> dict[str, np.ndarray]:
    """``name`` in pixels (and µm with a pixel size); unitless for power 0."""
    if power == 0:
        return {name: values}
    unit = "px^2" if power == 2 else "px"
    columns = {f"{name} {unit}": values}
    if pixel_size is not None:
        columns[f"{name} {UM}^2" if power == 2 else f"{name} {UM}"] = values * pixel_size**power
    return columns


def _by_label(values: Any, labels: Any, count: int) -> np.ndarray:
    """Values of a regionprops table placed at rows ``label - 1`` (NaN for absent labels)."""
    out = np.full(count, np.nan)
    out[np.asarray(labels, dtype=np.int64) - 1] = np.asarray(values, dtype=np.float64)
    return out


def _shape_columns(
    labels: np.ndarray, count: int, prefix: str, pixel_size: float | None, only_area: bool
) -> dict[str, np.ndarray]:
    from skimage.measure import regionprops_table

    wanted = ["area"] if only_area else list(SHAPES)
    table = regionprops_table(labels, properties=["label", *wanted])
    columns: dict[str, np.ndarray] = {}
    for prop in wanted:
        name, power = SHAPES[prop]
        values = _by_label(table[prop], table["label"], count)
        columns.update(_with_units(prefix + name, power, values, pixel_size))
    return columns


def _intensity_columns(
    labels: np.ndarray, count: int, intensity: np.ndarray, names: list[str], prefix: str
) -> dict[str, np.ndarray]:
    from skimage.measure import regionprops_table

    columns: dict[str, np.ndarray] = {}
    for channel, name in enumerate(names):
        # One 2D channel at a time: the extra properties then see plain 2D values.
        table = regionprops_table(
            labels,
            intensity_image=intensity[..., channel],
            properties=["label", "intensity_mean", "intensity_min", "intensity_max"],
            extra_properties=[pixel_median, pixel_stddev],
        )
        for prop, stat in INTENSITIES.items():
            columns[f"{prefix}{name}: {stat}"] = _by_label(table[prop], table["label"], count)
    return columns


def _sequential(cells: np.ndarray, ids: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """``cells`` relabelled 1..K (0 stays 0), and the original id of each of 1..K.

    Measuring sequential labels keeps regionprops' per-label lists short however large the
    ids are (global ids of a crop); ``ids`` keeps only those objects.
    """
    present, inverse = np.unique(cells, return_inverse=True)
    inverse = inverse.reshape(cells.shape)
    if present.size and present[0] == 0:
        present = present[1:]
    else:
        inverse = inverse + 1
    if ids is not None:
        keep = np.isin(present, np.asarray(list(ids), dtype=np.int64))
        renumber = np.zeros(len(present) + 1, dtype=np.int64)
        renumber[1:][keep] = np.arange(1, int(keep.sum()) + 1)
        inverse = renumber[inverse]
        present = present[keep]
    return inverse.astype(np.int32), present.astype(np.int64)


def _pair_nuclei(cells: np.ndarray, nuclei: np.ndarray, count: int) -> np.ndarray:
    """The nucleus id paired with each cell 1..count (0: none), one nucleus per cell."""
    import pandas as pd

    both = (cells > 0) & (nuclei > 0)
    pairs, overlap = np.unique(
        np.stack([cells[both], nuclei[both]]).astype(np.int64), axis=1, return_counts=True
    )
    table = pd.DataFrame({"cell": pairs[0], "nucleus": pairs[1], "overlap": overlap})
    # Largest overlap first (ties: lower ids); each nucleus goes to its best cell, then
    # each cell keeps its best nucleus.
    table = table.sort_values(["overlap", "cell", "nucleus"], ascending=[False, True, True])
    table = table.drop_duplicates("nucleus").drop_duplicates("cell")
    paired = np.zeros(count, dtype=np.int64)
    paired[table["cell"].to_numpy() - 1] = table["nucleus"].to_numpy()
    return paired


def _compartments(
    cells: np.ndarray, nuclei: np.ndarray, paired: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label images (by cell) of each cell's nucleus, clipped to the cell, and cytoplasm."""
    partner = np.concatenate([[0], paired])[cells]
    in_nucleus = (partner > 0) & (nuclei == partner)
    return np.where(in_nucleus, cells, 0), np.where(in_nucleus, 0, cells)


def measure_objects(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    *,
    nuclei: np.ndarray | None = None,
    pixel_size: float | None = None,
    channel_names: Sequence[str] | None = None,
    offset: tuple[int, int] = (0, 0),
    image_name: str | None = None,
    ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row of QuPath-like measurements per object of ``labels`` (see the module notes).

    ``intensity`` is YX or YXC (channels last; CYX is taken when unambiguous); ``nuclei``
    a nucleus label image of the same YX shape, which turns on the Nucleus / Cytoplasm /
    Cell compartments. ``pixel_size`` (µm per pixel) adds µm columns. ``offset`` (y, x) is
    where ``labels`` sits in a larger image and is added to the centroids. ``ids``
    restricts the table to these objects (ids without pixels give no row). Rows are sorted
    by ``Object ID``.
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    cells = _label_image(labels, "label image")
    if nuclei is not None:
        nuclei = _label_image(nuclei, "nucleus label image")
        if nuclei.shape != cells.shape:
            raise BadInputError(
                f"The nucleus labels {nuclei.shape} and the cell labels {cells.shape} must "
                "have the same shape."
            )
    image = None if intensity is None else _intensity_image(intensity, cells.shape)
    names = [] if image is None else _channel_names(channel_names, image.shape[-1])
    if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
        raise BadInputError(f"The pixel size must be a positive number of µm, not {pixel_size}.")
    pixel_size = None if pixel_size is None else float(pixel_size)

    cells, object_ids = _sequential(cells, ids)
    count = len(object_ids)
    columns: dict[str, Any] = {}
    if image_name is not None:
        columns["Image"] = np.full(count, image_name, dtype=object)
    columns["Object ID"] = object_ids
    paired = None
    if nuclei is not None:
        paired = _pair_nuclei(cells, nuclei, count)
        columns["Nucleus ID"] = np.where(paired > 0, paired, np.nan)
    table = regionprops_table(cells, properties=["label", "centroid"])
    for axis, name in ((1, "Centroid X"), (0, "Centroid Y")):
        centre = _by_label(table[f"centroid-{axis}"], table["label"], count)
        columns.update(_with_units(name, 1, centre + 0.5 + offset[axis], pixel_size))

    if paired is None:
        columns.update(_shape_columns(cells, count, "", pixel_size, only_area=False))
        if image is not None:
            columns.update(_intensity_columns(cells, count, image, names, ""))
        return pd.DataFrame(columns)

    assert nuclei is not None
    nucleus, cytoplasm = _compartments(cells, nuclei, paired)
    regions = {"Nucleus": nucleus, "Cytoplasm": cytoplasm, "Cell": cells}
    for compartment in ("Nucleus", "Cell", "Cytoplasm"):
        only_area = compartment == "Cytoplasm"
        prefix = f"{compartment}: "
        columns.update(_shape_columns(regions[compartment], count, prefix, pixel_size, only_area))
    for unit in ("px^2", f"{UM}^2"):
        key = f"Cytoplasm: Area {unit}"
        if key in columns:  # a cell its nucleus fills has no cytoplasm pixels: area 0
            columns[key] = np.nan_to_num(columns[key], nan=0.0)
    columns["Nucleus/Cell area ratio"] = columns["Nucleus: Area px^2"] / columns["Cell: Area px^2"]
    if image is not None:
        for compartment in COMPARTMENTS:
            prefix = f"{compartment}: "
            columns.update(_intensity_columns(regions[compartment], count, image, names, prefix))
    return pd.DataFrame(columns)


# -- writing ------------------------------------------------------------------------------------


def measured_features(
    labels: np.ndarray,
    table: pd.DataFrame,
    *,
    object_type: str = "detection",
    offset: tuple[int, int] = (0, 0),
    **options: Any,
) -> list[dict[str, Any]]:
    """GeoJSON features of ``labels`` carrying the rows of ``table`` as their measurements.

    ``offset`` is (y, x), as for :func:`measure_objects`; other ``options`` go to
    :func:`~napari_cellsparse.formats.geojson.labels_to_features` (classification, simplify, ...).
    Objects of ``labels`` that have no row in ``table`` are left out.
    """
    from ..formats.geojson import labels_to_features

    measurements = table_measurements(table)
    labels = _label_image(labels, "label image")
    kept = np.where(np.isin(labels, list(measurements)), labels, 0)
    return labels_to_features(
        kept,
        object_type=object_type,
        measurements=measurements,
        offset=(float(offset[1]), float(offset[0])),
        **options,
    )
