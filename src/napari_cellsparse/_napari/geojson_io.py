"""File > Open and File > Save for ``.geojson`` (npe2 reader and writers; no Qt).

Opening gives a Labels layer (objects painted at full resolution; a file with
``Background`` objects becomes a sparse annotation, 1 = background, cells from 2) and a
Shapes layer of the outlines. Saving writes a Labels layer's objects, or a Shapes layer's
closed shapes, as QuPath-ready features (:mod:`napari_cellsparse.formats.geojson`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.sparse_labels import SPARSE_KEY
from ..formats.geojson import features_to_labels, labels_to_features, read_features, write_features
from ..formats.tables import table_measurements

__all__ = ["get_reader", "write_labels", "write_shapes"]

# Layer metadata flag of a sparse annotation (1 = background): exported as Background.
SUFFIXES = (".geojson", ".geo.json")
ELLIPSE_VERTICES = 64

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for GeoJSON files, or None for anything else."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(str(p).lower().endswith(SUFFIXES) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """A Labels and a Shapes layer per GeoJSON file."""
    layers: list[LayerData] = []
    for item in [path] if isinstance(path, str) else path:
        stem = Path(item).name.split(".")[0]
        features = read_features(item)  # names the file in its errors
        try:
            result = features_to_labels(features)
        except BadInputError as err:
            raise BadInputError(f"{item}: {err}") from err
        sparse = 1 in result.classes and result.classes[1] == "Background"
        name = f"{stem} annotation" if sparse else stem
        layers.append((result.labels, {"name": name, "metadata": {SPARSE_KEY: sparse}}, "labels"))
        if result.polygons:
            layers.append(
                (
                    result.polygons,
                    {
                        "name": f"{stem} outlines",
                        "shape_type": "polygon",
                        "edge_color": "yellow",
                        "face_color": "transparent",
                    },
                    "shapes",
                )
            )
    return layers


def _target(path: str) -> Path:
    target = Path(path)
    if not target.name.lower().endswith(SUFFIXES):
        target = target.with_name(target.name + ".geojson")
    return target


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a 2D Labels layer's objects (QuPath detections).

    A layer measured by the Measure cells widget (``features`` with an ``Object ID``
    column) gives each object its row of measurements.
    """
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise BadInputError(
            f"GeoJSON holds 2D objects; this Labels layer has shape {labels.shape}. "
            "Save one slice (e.g. copy it to a new layer) instead."
        )
    sparse = bool((meta.get("metadata") or {}).get(SPARSE_KEY))
    table = meta.get("features")
    measurements = None
    if table is not None and "Object ID" in getattr(table, "columns", ()):
        measurements = table_measurements(table.drop(columns="index", errors="ignore"))
    features = labels_to_features(
        labels,
        object_type="annotation" if sparse else "detection",
        background_id=1 if sparse else None,
        measurements=measurements,
    )
    return [str(write_features(_target(path), features))]


def _ellipse(vertices: np.ndarray) -> np.ndarray:
    """napari stores an ellipse as its bounding box's corners: sample the outline."""
    centre = vertices.mean(axis=0)
    half = (vertices.max(axis=0) - vertices.min(axis=0)) / 2
    angle = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return centre + np.stack([half[0] * np.sin(angle), half[1] * np.cos(angle)], axis=1)


def write_shapes(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Shapes layer's polygons, rectangles and ellipses (QuPath annotations);
    lines and paths have no area and are left out."""
    types = meta.get("shape_type") or ["polygon"] * len(data)
    features = []
    for index, (vertices, kind) in enumerate(zip(data, types, strict=True), start=1):
        yx = np.asarray(vertices, dtype=np.float64)[:, -2:]
        if kind == "ellipse":
            yx = _ellipse(yx)
        elif kind not in ("polygon", "rectangle"):
            continue
        ring = yx[:, ::-1] + 0.5  # napari pixel centres -> QuPath pixel corners
        coords = [[round(float(x), 3), round(float(y), 3)] for x, y in ring]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*coords, coords[0]]]},
                "properties": {"objectType": "annotation", "label_id": index},
            }
        )
    if not features:
        raise BadInputError("No polygons, rectangles or ellipses to save in this Shapes layer.")
    return [str(write_features(_target(path), features))]
