"""Results shown again update their layer in place (no napari remove/add on the main thread)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def test_labels_shown_again_reuse_the_layer(viewer):
    from napari_cellsparse._napari.widgets._layers import show_layer

    first = show_layer(viewer, "labels", np.ones((20, 30), np.uint8), "result", scale=(2, 2))
    again = np.zeros((40, 50), np.uint16)
    again[:5, :5] = 7
    second = show_layer(viewer, "labels", again, "result", scale=(1, 3))
    assert second is first
    assert len(viewer.layers) == 1
    assert second.data.shape == (40, 50) and int(second.data.max()) == 7
    assert tuple(second.scale) == (1, 3)


def test_other_dimensionality_or_kind_replaces_the_layer(viewer):
    from napari_cellsparse._napari.widgets._layers import show_layer

    first = show_layer(viewer, "labels", np.ones((20, 30), np.uint8), "result")
    volume = show_layer(viewer, "labels", np.ones((4, 20, 30), np.uint8), "result")
    assert volume is not first and volume.data.ndim == 3
    image = show_layer(viewer, "image", np.ones((20, 30), np.float32), "result")
    assert image is not volume and type(image).__name__ == "Image"
    assert [layer.name for layer in viewer.layers] == ["result"]


def test_an_image_shown_again_gets_contrast_limits_for_its_new_data(viewer):
    from napari_cellsparse._napari.widgets._layers import show_layer

    layer = show_layer(viewer, "image", np.linspace(0, 1, 600).reshape(20, 30), "density")
    assert layer.contrast_limits[1] == pytest.approx(1.0)
    again = show_layer(viewer, "image", np.linspace(0, 50, 600).reshape(20, 30), "density")
    assert again is layer
    assert again.contrast_limits[1] == pytest.approx(50.0)


def test_points_and_shapes_shown_again_take_the_new_data_and_style(viewer):
    from napari_cellsparse._napari.widgets._layers import show_layer

    points = show_layer(viewer, "points", np.zeros((2, 2)), "centres", size=3.0, face_color="red")
    again = show_layer(viewer, "points", np.ones((5, 2)), "centres", size=6.0, face_color="blue")
    assert again is points and len(again.data) == 5
    assert np.allclose(again.size, 6.0)
    assert np.allclose(again.face_color, [0, 0, 1, 1])
    square = np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)
    shapes = show_layer(viewer, "shapes", ([square], "polygon"), "outlines", edge_color="magenta")
    again = show_layer(viewer, "shapes", ([square, square + 5, square + 9], "polygon"), "outlines")
    assert again is shapes
    assert again.shape_type == ["polygon"] * 3
    empty = show_layer(viewer, "shapes", ([], "polygon"), "outlines")
    assert empty is shapes and len(empty.data) == 0


def test_a_first_result_of_no_shapes_is_an_empty_layer(viewer):
    from napari_cellsparse._napari.widgets._layers import show_layer

    empty = show_layer(viewer, "shapes", ([], "polygon"), "outlines", edge_color="magenta")
    assert len(empty.data) == 0
    square = np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)
    again = show_layer(viewer, "shapes", ([square], "polygon"), "outlines", edge_color="magenta")
    assert again is empty and again.shape_type == ["polygon"]


def test_results_take_a_small_label_type_already_shown(viewer):
    from napari_cellsparse._napari.widgets._layers import compact_labels

    labels = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert compact_labels(labels).dtype == np.uint8  # nothing shown: the smallest
    viewer.add_labels(np.zeros((3, 4), np.uint16), name="annotation")
    assert compact_labels(labels, viewer).dtype == np.uint16  # napari has drawn that type
    assert compact_labels(labels + 70_000, viewer).dtype == np.int64  # does not fit
    assert compact_labels(labels - 1, viewer).dtype == np.int64  # negative ids stay


def test_the_default_annotation_is_never_a_result(viewer):
    from napari_cellsparse._napari.widgets._layers import OUTPUT_KEY, annotation_choice

    image = viewer.add_image(np.zeros((8, 8)), name="annotation image")
    result = viewer.add_labels(np.zeros((8, 8), int), name="result", metadata={OUTPUT_KEY: "test"})
    assert annotation_choice([image, result]) is None
    painted = viewer.add_labels(np.zeros((8, 8), int), name="Labels")
    assert annotation_choice(viewer.layers) == "Labels"
    named = viewer.add_labels(
        np.zeros((8, 8), int), name="My Annotation", metadata={OUTPUT_KEY: "test"}
    )
    assert annotation_choice(viewer.layers) == named.name  # a person named it so
    assert painted.metadata == {} and result.metadata["cellsparse_output"] == "test"
