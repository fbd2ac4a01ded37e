"""GeoJSON that QuPath reads and writes: label images to features and back.

Coordinates are image pixels in QuPath's frame (x right, y down, a pixel's corner at
integers; see :mod:`napari_cellsparse.formats.polygons`), so an exported object covers exactly its
pixels. Each object is one ``Feature`` (a ``Polygon``, or a ``MultiPolygon`` for an object
in several parts; holes kept) whose ``properties`` carry QuPath's ``objectType`` and
``classification`` (name and colour), the object's ``label_id`` and its ``measurements``.

Reading accepts QuPath exports (0.2 to 0.5 spellings), samapi and cellsparse-api responses:
a ``FeatureCollection``, a list of features, or one feature. For sparse training, features
classified ``Background`` become label 1 and every other object a cell id from 2, the
annotation convention of :mod:`napari_cellsparse.core.sparse_labels`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import BadInputError
from ..core.limits import MAX_COORDINATE, MAX_LABEL_PIXELS, Bound
from ..core.paths import atomic_target
from ..core.sparse_labels import FIRST_CELL_ID
from .polygons import Polygon, mask_polygons, rasterize, simplify_ring

__all__ = [
    "BACKGROUND_CLASSES",
    "FeatureLabels",
    "features_to_labels",
    "labels_to_features",
    "polygons_to_geometry",
    "read_features",
    "write_features",
]

BACKGROUND_CLASSES = ("Background",)
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tma_core", "roi")
DEFAULT_COLORS = {"Background": [80, 80, 80], "Foreground": [255, 200, 0]}
LABEL_DTYPE = np.int32  # of the label images features are painted into
LABEL_ID = Bound(0, float(np.iinfo(LABEL_DTYPE).max), integer=True)


def _close(ring: np.ndarray) -> list[list[float]]:
    coords = [[_number(x), _number(y)] for x, y in ring]
    return [*coords, coords[0]]


def _number(value: float) -> float | int:
    """Whole numbers as ints (pixel corners), others rounded to 1/1000 px."""
    value = float(value)
    return int(value) if value.is_integer() else round(value, 3)


def polygons_to_geometry(polygons: Sequence[Polygon], simplify: float = 0.0) -> dict[str, Any]:
    """A GeoJSON ``Polygon`` (one part) or ``MultiPolygon`` from (x, y) rings."""
    parts = [[_close(simplify_ring(np.asarray(r), simplify)) for r in rings] for rings in polygons]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def _color(name: str) -> list[int]:
    if name in DEFAULT_COLORS:
        return DEFAULT_COLORS[name]
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(name))
    rng = np.random.default_rng(seed)
    return [int(v) for v in rng.integers(64, 256, size=3)]


def labels_to_features(
    labels: np.ndarray,
    classification: str | Mapping[int, str] | None = None,
    object_type: str = "detection",
    measurements: Mapping[int, Mapping[str, float]] | None = None,
    simplify: float = 0.0,
    min_area: int = 0,
    background_id: int | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
) -> list[dict[str, Any]]:
    """One GeoJSON feature per object of a 2D label image (0 = nothing).

    ``classification`` names every object's class (or maps ids to names); ``measurements``
    adds per-id numbers to the ones computed here (area and centroid, in pixels). Objects
    under ``min_area`` pixels are left out; ``simplify`` is a Douglas-Peucker tolerance in
    pixels (0 keeps the exact pixel outline). ``background_id`` (1 for a sparse annotation)
    is exported as one ``Background`` feature. ``offset`` (x, y) moves every coordinate, for
    a crop of a larger image.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise BadInputError(f"GeoJSON export needs a 2D label image; got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise BadInputError(f"A label image holds whole numbers, not {labels.dtype}.")
    if object_type not in OBJECT_TYPES:
        raise BadInputError(f"objectType must be one of {', '.join(OBJECT_TYPES)}.")
    features = []
    for index, window in enumerate(ndi.find_objects(labels.clip(min=0)), start=1):
        if window is None:
            continue
        mask = labels[window] == index
        area = int(mask.sum())
        is_background = background_id is not None and index == background_id
        if area < min_area and not is_background:
            continue
        y0, x0 = window[0].start, window[1].start
        polygons = mask_polygons(mask, (x0 + offset[0], y0 + offset[1]))
        if is_background:
            name = BACKGROUND_CLASSES[0]
        elif isinstance(classification, Mapping):
            name = classification.get(index)
        else:
            name = classification
        ys, xs = np.nonzero(mask)
        values = {
            "Area px^2": area,
            "Centroid X px": round(float(xs.mean()) + x0 + 0.5 + offset[0], 3),
            "Centroid Y px": round(float(ys.mean()) + y0 + 0.5 + offset[1], 3),
        }
        if measurements and index in measurements:
            values.update({k: float(v) for k, v in measurements[index].items()})
        properties: dict[str, Any] = {
            "objectType": "annotation" if is_background else object_type,
            "label_id": index,
            "measurements": values,
        }
        if name:
            properties["classification"] = {"name": name, "color": _color(name)}
        features.append(
            {
                "type": "Feature",
                "geometry": polygons_to_geometry(polygons, simplify),
                "properties": properties,
            }
        )
    return features


def write_features(path: str | os.PathLike, features: Sequence[Mapping[str, Any]]) -> Path:
    """Write a ``FeatureCollection`` (atomically: a half-written file never replaces one)."""
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return Path(path)


def read_features(source: str | os.PathLike | Any) -> list[dict[str, Any]]:
    """Features from a GeoJSON file or an already parsed object (collection, list, feature)."""
    data = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BadInputError(f"Could not read GeoJSON from {path}: {err}") from err
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        data = data.get("features", [])
    elif isinstance(data, Mapping) and (data.get("type") == "Feature" or "geometry" in data):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, Mapping) for f in data):
        raise BadInputError(
            "Not GeoJSON features: expected a FeatureCollection, a list of features or a feature."
        )
    features = [dict(f) for f in data]
    if isinstance(source, (str, os.PathLike)):
        try:
            for index, feature in enumerate(features):
                _feature_polygons(feature, index)
        except BadInputError as err:
            raise BadInputError(f"{Path(source)}: {err}") from err
    return features


def _geometry_polygons(geometry: Mapping[str, Any] | None) -> list[Polygon]:
    """(x, y) rings of a Polygon, MultiPolygon or GeometryCollection; other types give none."""
    if not geometry:
        return []
    kind = geometry.get("type")
    try:
        if kind == "Polygon":
            return [[np.asarray(r, dtype=np.float64)[:, :2] for r in geometry["coordinates"]]]
        if kind == "MultiPolygon":
            return [
                [np.asarray(r, dtype=np.float64)[:, :2] for r in part]
                for part in geometry["coordinates"]
            ]
        if kind == "GeometryCollection":
            return [p for g in geometry.get("geometries", []) for p in _geometry_polygons(g)]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise BadInputError(f"A {kind} geometry has malformed coordinates ({err}).") from err
    return []


def _feature_name(feature: Mapping[str, Any], index: int) -> str:
    """How messages name a feature: its position (from 1) and its id, if it has one."""
    ident = feature.get("id")
    return f"feature {index + 1}" + ("" if ident is None else f" (id {ident!r})")


def _feature_polygons(feature: Mapping[str, Any], index: int) -> list[Polygon]:
    """The (x, y) rings of feature number ``index``, refused unless every coordinate is a
    finite number within :data:`~napari_cellsparse.core.limits.MAX_COORDINATE` and its
    ``label_id``, if any, a whole number that fits a label image (int32)."""
    try:
        polygons = _geometry_polygons(feature.get("geometry"))
    except BadInputError as err:
        raise BadInputError(f"GeoJSON {_feature_name(feature, index)}: {err}") from err
    for rings in polygons:
        for ring in rings:
            if ring.size and not (np.isfinite(ring).all() and np.abs(ring).max() <= MAX_COORDINATE):
                bad = ring[~(np.isfinite(ring) & (np.abs(ring) <= MAX_COORDINATE))][0]
                raise BadInputError(
                    f"GeoJSON {_feature_name(feature, index)}: coordinates must be finite "
                    f"numbers from -{MAX_COORDINATE:,.0f} to {MAX_COORDINATE:,.0f} pixels; "
                    f"found {float(bad)!r}."
                )
    label_id = (feature.get("properties") or {}).get("label_id")
    if label_id is not None and not LABEL_ID.allows(label_id):
        raise BadInputError(
            f"GeoJSON {_feature_name(feature, index)}: label_id must be "
            f"{LABEL_ID.describe()}; got {label_id!r}."
        )
    return polygons


def _class_name(properties: Mapping[str, Any]) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, Mapping):
        name = classification.get("name")
        return str(name) if name else None
    if isinstance(classification, str):
        return classification
    return None


@dataclass
class FeatureLabels:
    """Features painted into a label image, with what each id came from."""

    labels: np.ndarray
    classes: dict[int, str | None]
    polygons: list[np.ndarray]  # exterior rings as napari (row, col) vertices
    skipped: int  # features without an area (points, lines, empty)


def features_to_labels(
    features: Iterable[Mapping[str, Any]],
    shape: tuple[int, int] | None = None,
    sparse: bool | None = None,
    background_classes: Sequence[str] = BACKGROUND_CLASSES,
    offset: tuple[float, float] = (0.0, 0.0),
) -> FeatureLabels:
    """Paint features into a label image of ``shape`` (default: their extent).

    ``sparse`` (default: when any feature is classified as background) gives the annotation
    convention: background features 1, every other object its own id from 2, painted over
    the background. Otherwise ids come from ``label_id`` where features carry distinct ones,
    else 1, 2, ... in order. Later features paint over earlier ones where they overlap.
    ``offset`` (x, y) is subtracted from the coordinates (features of a crop).
    """
    items = []
    skipped = 0
    for index, feature in enumerate(features):
        polygons = _feature_polygons(feature, index)
        if not polygons:
            skipped += 1
            continue
        properties = feature.get("properties") or {}
        label_id = properties.get("label_id")
        items.append(
            (polygons, _class_name(properties), None if label_id is None else int(label_id))
        )
    if shape is None:
        if not items:
            raise BadInputError("No polygons in the GeoJSON, and no image size to make labels.")
        extent_x = max(float(rs[0][:, 0].max()) for p, _, _ in items for rs in p) - offset[0]
        extent_y = max(float(rs[0][:, 1].max()) for p, _, _ in items for rs in p) - offset[1]
        shape = (max(1, int(np.ceil(extent_y))), max(1, int(np.ceil(extent_x))))
        if shape[0] * shape[1] > MAX_LABEL_PIXELS:
            raise BadInputError(
                f"The GeoJSON objects reach x = {extent_x:,.0f}, y = {extent_y:,.0f} px: a label "
                f"image that large has more than {MAX_LABEL_PIXELS:,} pixels. Open it with the "
                "image it belongs to (its shape), or crop it."
            )
    if sparse is None:
        sparse = any(name in background_classes for _, name, _ in items)
    given = [i for _, _, i in items]
    use_given = (
        not sparse
        and all(isinstance(i, int) and i > 0 for i in given)
        and len(set(given)) == len(given)
    )
    labels = np.zeros(shape, dtype=LABEL_DTYPE)
    classes: dict[int, str | None] = {}
    outlines: list[np.ndarray] = []
    order = sorted(
        range(len(items)), key=lambda k: not (sparse and items[k][1] in background_classes)
    )
    next_id = FIRST_CELL_ID if sparse else 1
    for k in order:
        polygons, name, label_id = items[k]
        inside = rasterize(polygons, shape, offset)
        if sparse and name in background_classes:
            labels[inside & (labels == 0)] = 1
            classes[1] = name
        else:
            value = int(label_id) if use_given else next_id
            next_id += 1
            labels[inside] = value
            classes[value] = name
        for rings in polygons:
            exterior = rings[0]
            if len(exterior) > 1 and np.allclose(exterior[0], exterior[-1]):
                exterior = exterior[:-1]
            outlines.append((exterior - np.asarray(offset) - 0.5)[:, ::-1])
    return FeatureLabels(labels, classes, outlines, skipped)
