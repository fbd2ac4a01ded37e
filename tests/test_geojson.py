"""GeoJSON out and in: exact pixel outlines, holes, edges, QuPath's spellings, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.formats.geojson import (
    features_to_labels,
    labels_to_features,
    read_features,
    write_features,
)
from napari_cellsparse.formats.polygons import mask_outline, mask_polygons, rasterize, ring_area
from napari_cellsparse.samples.generated import make_nuclei


def _tricky_labels() -> np.ndarray:
    """Nuclei plus: a ring (hole with an island of another object inside), objects cut by
    every image edge, a two-part object, parts touching only at a corner, a single pixel."""
    _, labels = make_nuclei((200, 240), n_objects=25, radius=(5.0, 10.0), seed=7)
    labels = labels.copy()
    top = int(labels.max())
    rr, cc = disk((100, 120), 30, shape=labels.shape)
    labels[rr, cc] = top + 1
    rr, cc = disk((100, 120), 15, shape=labels.shape)
    labels[rr, cc] = 0  # the hole
    rr, cc = disk((100, 120), 5, shape=labels.shape)
    labels[rr, cc] = top + 2  # an island inside the hole
    labels[0:6, 0:9] = top + 3  # corner
    labels[194:200, 100:130] = top + 4  # bottom edge
    labels[50:70, 234:240] = top + 5  # right edge
    labels[10:14, 60:64] = top + 6  # a two-part object...
    labels[10:14, 70:74] = top + 6
    labels[20, 20] = labels[21, 21] = top + 7  # ...and one touching itself at a corner
    labels[150, 5] = top + 8  # a single pixel
    return labels


def test_polygons_cover_exactly_the_pixels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((24, 17)) > 0.45  # holes, islands, corner contacts everywhere
        polygons = mask_polygons(mask, (3.0, 5.0))
        np.testing.assert_array_equal(rasterize(polygons, mask.shape, (3.0, 5.0)), mask)
        for rings in polygons:
            assert ring_area(rings[0]) > 0  # exterior counter-clockwise (GeoJSON's rule)
            assert all(ring_area(h) < 0 for h in rings[1:])
            assert sum(ring_area(r) for r in rings) > 0


def test_round_trip_reproduces_every_object(tmp_path: Path) -> None:
    labels = _tricky_labels()
    features = labels_to_features(labels, classification="Nucleus")
    assert len(features) == len(np.unique(labels)) - 1
    path = write_features(tmp_path / "objects.geojson", features)
    back = features_to_labels(read_features(path), shape=labels.shape)
    np.testing.assert_array_equal(back.labels, labels)  # same pixels and ids: IoU 1 each
    assert back.skipped == 0 and set(back.classes.values()) == {"Nucleus"}

    by_id = {f["properties"]["label_id"]: f for f in features}
    top = int(labels.max())
    ring = by_id[top - 7]["geometry"]
    assert ring["type"] == "Polygon" and len(ring["coordinates"]) == 2  # exterior + hole
    assert by_id[top - 2]["geometry"]["type"] == "MultiPolygon"  # two parts
    assert by_id[top - 1]["geometry"]["type"] == "MultiPolygon"  # touching at a corner
    (pixel,) = by_id[top]["geometry"]["coordinates"]  # the single pixel at x 5, y 150
    assert len(pixel) == 5 and pixel[0] == pixel[-1]
    assert sorted(map(tuple, pixel[:-1])) == [(5, 150), (5, 151), (6, 150), (6, 151)]
    corner = by_id[top - 5]["geometry"]["coordinates"][0]
    assert [0, 0] in corner and [9, 6] in corner  # pixel corners, the image edge included
    nucleus = by_id[1]["properties"]
    assert nucleus["objectType"] == "detection"
    assert nucleus["classification"]["name"] == "Nucleus"
    assert len(nucleus["classification"]["color"]) == 3
    assert nucleus["measurements"]["Area px^2"] == int((labels == 1).sum())
    xs = np.nonzero(labels == 1)[1]
    assert nucleus["measurements"]["Centroid X px"] == pytest.approx(xs.mean() + 0.5, abs=1e-3)


def test_simplify_min_area_measurements_and_offset() -> None:
    labels = _tricky_labels()
    exact = labels_to_features(labels)
    simple = labels_to_features(labels, simplify=1.0, min_area=20, measurements={1: {"Score": 0.5}})
    assert len(simple) == len(exact) - 2  # the corner-touching pair and the single pixel
    vertices = sum(len(r) for f in exact for r in f["geometry"]["coordinates"][:1])
    fewer = sum(len(r) for f in simple for r in f["geometry"]["coordinates"][:1])
    assert fewer < 0.7 * vertices
    back = features_to_labels(simple, shape=labels.shape).labels
    for k in {f["properties"]["label_id"] for f in simple}:
        a, b = labels == k, back == k
        assert (a & b).sum() / (a | b).sum() >= 0.8
    assert simple[0]["properties"]["measurements"]["Score"] == 0.5
    moved = labels_to_features(labels[:50, :50], offset=(1000.0, 2000.0))
    back = features_to_labels(moved, shape=(50, 50), offset=(1000.0, 2000.0)).labels
    np.testing.assert_array_equal(back, labels[:50, :50])


def test_sparse_annotation_from_qupath_classes() -> None:
    """QuPath annotations classified Background / Foreground train here: 1 and 2, 3, ..."""
    background = {"type": "Polygon", "coordinates": [[[0, 0], [40, 0], [40, 30], [0, 30], [0, 0]]]}
    cell = {"type": "Polygon", "coordinates": [[[5, 5], [15, 5], [15, 12], [5, 12], [5, 5]]]}
    other = {"type": "Polygon", "coordinates": [[[30, 20], [38, 20], [38, 28], [30, 28], [30, 20]]]}
    features = [
        {"type": "Feature", "geometry": cell,
         "properties": {"object_type": "annotation",
                        "classification": {"name": "Foreground", "colorRGB": -256}}},
        {"type": "Feature", "geometry": background,
         "properties": {"objectType": "annotation", "classification": {"name": "Background"}}},
        {"type": "Feature", "geometry": other, "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}},
    ]  # fmt: skip
    result = features_to_labels({"type": "FeatureCollection", "features": features}["features"])
    labels = result.labels
    assert labels.shape == (30, 40) and result.skipped == 1
    assert (labels[5:12, 5:15] == 2).all() and (labels[20:28, 30:38] == 3).all()
    assert set(np.unique(labels)) == {1, 2, 3}  # background everywhere else, under the cells
    assert result.classes == {1: "Background", 2: "Foreground", 3: None}
    assert len(result.polygons) == 3
    np.testing.assert_allclose(result.polygons[1][0], [4.5, 4.5])  # napari (row, col)
    # the same features without background: a plain label image, ids in order
    plain = features_to_labels([features[0], features[2]], shape=(30, 40)).labels
    assert set(np.unique(plain)) == {0, 1, 2}


def test_read_accepts_collections_lists_and_single_features(tmp_path: Path) -> None:
    feature = labels_to_features(np.pad(np.ones((3, 3), dtype=np.int32), 2))[0]
    for data in ({"type": "FeatureCollection", "features": [feature]}, [feature], feature):
        path = tmp_path / "f.geojson"
        path.write_text(json.dumps(data))
        assert read_features(path) == [json.loads(json.dumps(feature))]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "Could not read GeoJSON"),
        ('{"type": "Topology"}', "Not GeoJSON features"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]',
            "malformed",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]',
            "No polygons",
        ),
    ],
)
def test_bad_geojson_is_a_message(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(BadInputError, match=message):
        features_to_labels(read_features(path))


def test_bad_labels_are_refused() -> None:
    with pytest.raises(BadInputError, match="2D"):
        labels_to_features(np.zeros((2, 5, 5), dtype=np.int32))
    with pytest.raises(BadInputError, match="whole numbers"):
        labels_to_features(np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(BadInputError, match="objectType"):
        labels_to_features(np.zeros((5, 5), dtype=np.int32), object_type="nucleus")
    assert labels_to_features(np.zeros((5, 5), dtype=np.int32)) == []


def test_sparse_annotation_exports_its_background() -> None:
    annotation = np.zeros((20, 20), dtype=np.int32)
    annotation[:5] = 1
    annotation[10:15, 10:15] = 2
    features = labels_to_features(annotation, background_id=1, object_type="annotation")
    assert [
        f["properties"]["classification"]["name"]
        for f in features
        if "classification" in f["properties"]
    ] == ["Background"]
    back = features_to_labels(features, shape=(20, 20)).labels
    np.testing.assert_array_equal(back, annotation)


def test_mask_outline_is_the_largest_part_on_pixel_edges_in_napari_frame() -> None:
    """The Shapes outline comes from the same tracer as GeoJSON: filled in napari's frame
    (pixel centres at integers) it gives back the largest part's pixels exactly."""
    from skimage.draw import polygon2mask

    yy, xx = np.mgrid[:40, :40]
    mask = (yy - 20) ** 2 + (xx - 18) ** 2 < 90
    mask[2, 2] = True  # a one-pixel part: smaller, not outlined
    outline = mask_outline(mask, tolerance=0.0)
    assert np.array_equal(polygon2mask(mask.shape, outline), mask & ~(yy + xx == 4))
    simple = mask_outline(mask)
    assert 3 <= len(simple) < len(outline)
    shifted = mask_outline(mask, (100, 7))
    assert np.allclose(shifted, simple + np.array([100.0, 7.0]))
    single = np.zeros((5, 5), bool)
    single[1, 3] = True
    assert sorted(map(tuple, mask_outline(single))) == [
        (0.5, 2.5),
        (0.5, 3.5),
        (1.5, 2.5),
        (1.5, 3.5),
    ]
    assert mask_outline(np.zeros((4, 4), bool)) is None
