"""File > Open / Save of ``.geojson`` through napari's plugin machinery (npe2).

Marked ``gui`` (it needs a napari viewer, so Xvfb). It may run in any order with the training
tests: TensorFlow, which crashes beside a viewer's OpenGL, only ever loads in child processes
(tests/conftest.py fails a test after which it is loaded here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


def test_labels_save_and_open_round_trip(make_napari_viewer, tmp_path: Path) -> None:
    from napari_cellsparse.samples.generated import make_nuclei

    viewer = make_napari_viewer()
    _, labels = make_nuclei((128, 160), n_objects=12, seed=2)
    layer = viewer.add_labels(labels, name="nuclei")
    written = layer.save(str(tmp_path / "nuclei.geojson"), plugin="napari-cellsparse")
    assert written == [str(tmp_path / "nuclei.geojson")]
    data = json.loads((tmp_path / "nuclei.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == labels.max()
    assert {f["properties"]["objectType"] for f in data["features"]} == {"detection"}

    opened = viewer.open(str(tmp_path / "nuclei.geojson"), plugin="napari-cellsparse")
    kinds = {type(ly).__name__: ly for ly in opened}
    back = kinds["Labels"].data
    # the extent of the objects: the image may be larger, never smaller than the objects
    np.testing.assert_array_equal(back, labels[: back.shape[0], : back.shape[1]])
    assert not labels[back.shape[0] :].any() and not labels[:, back.shape[1] :].any()
    outlines = kinds["Shapes"]
    assert len(outlines.data) == labels.max()


def test_sparse_annotation_keeps_its_background(make_napari_viewer, tmp_path: Path) -> None:
    from napari_cellsparse._napari.sample_data import generated_nuclei

    viewer = make_napari_viewer()
    for data, kwargs, kind in generated_nuclei():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    annotation = next(ly for ly in viewer.layers if "Sparse annotation" in ly.name)
    path = tmp_path / "annotation.geojson"
    annotation.save(str(path), plugin="napari-cellsparse")
    names = [
        f["properties"].get("classification", {}).get("name")
        for f in json.loads(path.read_text())["features"]
    ]
    assert names.count("Background") == 1
    (labels, _shapes) = viewer.open(str(path), plugin="napari-cellsparse")
    assert labels.name == "annotation annotation" or labels.name.endswith("annotation")
    original = np.asarray(annotation.data)
    h, w = labels.data.shape
    # background stays 1, every cell keeps its pixels (ids may be renumbered from 2)
    np.testing.assert_array_equal(labels.data == 1, original[:h, :w] == 1)
    for k in np.unique(original[original >= 2]):
        ids = np.unique(labels.data[original[:h, :w] == k])
        assert len(ids) == 1 and ids[0] >= 2


def test_shapes_save_and_errors(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    shapes = viewer.add_shapes(
        [np.array([[10, 10], [10, 30], [25, 30], [25, 10]]), np.array([[40, 40], [60, 70]])],
        shape_type=["rectangle", "line"],
    )
    shapes.save(str(tmp_path / "boxes"), plugin="napari-cellsparse")
    features = json.loads((tmp_path / "boxes.geojson").read_text())["features"]
    assert len(features) == 1  # the line has no area
    ring = features[0]["geometry"]["coordinates"][0]
    assert [10.5, 10.5] in ring and [30.5, 25.5] in ring

    from napari_cellsparse._napari.geojson_io import write_labels
    from napari_cellsparse.core.errors import BadInputError

    with pytest.raises(BadInputError, match="2D objects"):
        write_labels(str(tmp_path / "stack.geojson"), np.ones((3, 8, 8), np.int32), {})
    assert not (tmp_path / "stack.geojson").exists()
    bad = tmp_path / "bad.geojson"
    bad.write_text("{broken")
    with pytest.raises(Exception, match="Could not read GeoJSON"):
        viewer.open(str(bad), plugin="napari-cellsparse")
