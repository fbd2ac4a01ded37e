"""The main job's window: ``make demo`` docks every widget of the manifest over the sample."""

from __future__ import annotations

import numpy as np


def test_demo_docks_every_widget_and_shows_the_whole_image(make_napari_viewer, qtbot):
    from napari_cellsparse.demo import open_demo, widget_names

    names = widget_names()
    expected = {"SAM annotator", "Sparse training", "Cell counting", "Batch", "Measure cells"}
    assert expected <= set(names)
    viewer = make_napari_viewer(show=True)
    viewer, docked = open_demo(viewer)
    assert len(docked) == len(names)
    assert all(f"{name} (napari-cellsparse)" in viewer.window._dock_widgets for name in names)
    qtbot.wait(100)
    extent = viewer.layers[0].extent.world
    size = (extent[1] - extent[0])[-2:]
    canvas = viewer.window._qt_viewer.canvas
    visible = np.asarray(canvas.size, float) / viewer.camera.zoom  # (height, width)
    assert np.all(visible >= size * 0.999), (visible, size)
