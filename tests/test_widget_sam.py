"""The SAM annotator in a real napari viewer (Xvfb): boxes, points, undo, errors, cancel."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


@pytest.fixture
def annotator(make_napari_viewer, vit_t_checkpoint):
    from napari_cellsparse._napari.widgets.sam_annotator import SamAnnotatorWidget
    from napari_cellsparse.samples.generated import make_nuclei

    viewer = make_napari_viewer()
    image, truth = make_nuclei(shape=(256, 256), n_objects=12, seed=3)
    viewer.add_image(image, name="nuclei")
    widget = SamAnnotatorWidget(viewer)
    widget.weights_edit.setText(str(vit_t_checkpoint))
    widget.runner.synchronous = True
    return viewer, widget, truth


def _rectangle(x0, y0, x1, y1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)


def test_box_becomes_object_without_touching_existing_cells(annotator):
    viewer, widget, _ = annotator
    annotation = viewer.add_labels(np.zeros((256, 256), dtype=np.int32), name="my cells")
    annotation.data[100:140, 100:140] = 5  # a cell the user already annotated
    annotation.data[0:10, :] = 1  # painted background
    widget._refresh_layers()
    widget.labels_combo.setCurrentText("my cells")
    before = annotation.data.copy()

    widget.prompts_layer().add_rectangles(_rectangle(90, 90, 200, 200))

    data = annotation.data
    assert widget.state.prompter is not None, widget.status.text()
    assert (data[100:140, 100:140] == 5).all(), "an existing cell was overwritten"
    new = data != before
    assert new.any()
    assert set(np.unique(data[new])) == {6}, "the new object must take the next free id"
    assert len(viewer.layers["SAM outlines"].data) == 1
    annotation.undo()
    np.testing.assert_array_equal(annotation.data, before)


def test_segment_all_boxes_and_ids_start_at_two(annotator):
    viewer, widget, _ = annotator
    shapes = widget.prompts_layer()
    shapes.events.data.disconnect(widget._on_prompts)  # draw first, segment on demand
    shapes.add_rectangles([_rectangle(10, 10, 60, 60), _rectangle(150, 150, 220, 240)])
    widget.segment_all_boxes()
    labels = viewer.layers["SAM annotation"].data
    ids = set(np.unique(labels)) - {0}
    assert ids and min(ids) == 2 and ids <= {2, 3}
    assert 1 not in ids


def test_points_preview_and_commit(annotator):
    viewer, widget, _ = annotator
    widget.point_mode.setChecked(True)
    points = viewer.layers["SAM points"]
    points.add([[128, 128]])
    assert "SAM preview" in viewer.layers
    assert widget.state.preview is not None
    assert viewer.layers["SAM preview"].data.any() == (widget.state.preview.area > 0)
    widget.negative_button.setChecked(True)
    points.add([[20, 20]])
    assert list(points.features["positive"]) == [True, False]
    widget.commit_points()
    labels = viewer.layers["SAM annotation"].data
    assert labels.max() == 2
    assert len(points.data) == 0
    assert not viewer.layers["SAM preview"].data.any()


def test_stack_writes_only_the_current_slice(annotator):
    viewer, widget, _ = annotator
    from napari_cellsparse.samples.generated import make_nuclei

    stack = np.stack([make_nuclei((128, 128), 5, seed=s)[0] for s in range(3)])
    viewer.add_image(stack, name="stack")
    widget._refresh_layers()
    widget.image_combo.setCurrentText("stack")
    viewer.dims.set_current_step(0, 1)
    widget.prompts_layer().add_rectangles(
        np.array([[1, 20, 20], [1, 20, 90], [1, 90, 90], [1, 90, 20]])
    )
    labels = viewer.layers["SAM annotation"].data
    assert labels.shape == stack.shape
    assert labels[1].any() and not labels[0].any() and not labels[2].any()


def test_errors_are_messages_not_crashes(make_napari_viewer, vit_t_checkpoint, tmp_path):
    from napari_cellsparse._napari.widgets.sam_annotator import SamAnnotatorWidget

    viewer = make_napari_viewer()
    widget = SamAnnotatorWidget(viewer)
    widget.runner.synchronous = True
    widget.compute_embedding()
    assert "No image layer" in widget.status.text()

    viewer.add_image(np.zeros((2, 2, 2, 8, 8)), name="5d")
    widget._refresh_layers()
    widget.compute_embedding()
    assert "dimensions" in widget.status.text()

    viewer.layers.clear()
    viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    widget._refresh_layers()
    widget.compute_embedding()  # no weights anywhere in the (temporary) cache
    assert "mobile_sam.pt" in widget.status.text() and "download" in widget.status.text().lower()

    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"not a checkpoint")
    widget.weights_edit.setText(str(corrupt))
    widget.compute_embedding()
    assert "corrupted" in widget.status.text()
    assert widget.state.prompter is None

    widget.weights_edit.setText(str(vit_t_checkpoint))
    widget.compute_embedding()
    widget.prompts_layer().add_rectangles(_rectangle(30, 30, 30.5, 60))  # a 1-pixel-wide box
    assert "too small" in widget.status.text()
    assert "SAM annotation" not in viewer.layers or not viewer.layers["SAM annotation"].data.any()


def test_cancel_embedding_in_a_thread(annotator, qtbot):
    _viewer, widget, _ = annotator
    widget.runner.synchronous = False
    widget.compute_embedding()
    assert widget.runner.busy
    widget.runner.cancel()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.state.prompter is None
    assert widget.status.text() == "Cancelled."
    assert len(widget.state.cache) == 0


def test_embedding_in_a_thread_keeps_widget_usable(annotator, qtbot):
    _viewer, widget, _ = annotator
    widget.runner.synchronous = False
    widget.compute_embedding()
    assert not widget.embed_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert widget.embed_button.isEnabled()
    assert widget.state.prompter is not None
    assert "embedding ready" in widget.status.text()


def test_viewer_first_then_sam_does_not_crash(vit_t_checkpoint, tmp_path):
    """Regression: torchvision/triton imported after napari's OpenGL context (see _lazy)."""
    script = textwrap.dedent(
        f"""
        import numpy as np, napari
        from qtpy.QtWidgets import QApplication
        viewer = napari.Viewer()
        viewer.add_image(np.random.default_rng(0).random((128, 128)), name="img")
        QApplication.processEvents()
        assert "torchvision" not in __import__("sys").modules
        from napari_cellsparse._napari.widgets.sam_annotator import SamAnnotatorWidget
        widget = SamAnnotatorWidget(viewer)
        widget.runner.synchronous = True
        widget.weights_edit.setText({str(vit_t_checkpoint)!r})
        widget.compute_embedding()
        assert widget.state.prompter is not None, widget.status.text()
        viewer.screenshot({str(tmp_path / "shot.png")!r})
        viewer.close()
        print("survived")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "survived" in done.stdout
    assert Path(tmp_path / "shot.png").stat().st_size > 0


def test_docked_through_napari_boxes_work(make_napari_viewer, vit_t_checkpoint):
    """Docked by napari, the widget sees a proxy viewer (new layer wrappers on each access)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellsparse", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellsparse", "SAM annotator")
    widget.weights_edit.setText(str(vit_t_checkpoint))
    widget.runner.synchronous = True
    # the sample's sparse annotation is the natural target: SAM adds cells to it
    from napari_cellsparse._napari.sample_data import SPARSE_LAYER

    assert widget.labels_combo.currentText() == SPARSE_LAYER
    before = np.array(viewer.layers[SPARSE_LAYER].data)
    widget.segment_all_boxes()
    labels = viewer.layers[SPARSE_LAYER].data
    n_boxes = len(viewer.layers["SAM prompts"].data)
    assert n_boxes == 12
    new_ids = np.unique(labels[labels > before.max()])
    assert 1 <= len(new_ids) <= n_boxes and new_ids.min() == before.max() + 1
    cells = before >= 2
    np.testing.assert_array_equal(labels[cells], before[cells])  # painted cells are kept
    assert len(viewer.layers["SAM outlines"].data) == len(new_ids)


def test_download_button_fetches_weights_and_reports_failures(
    annotator, http_server, closed_port, tmp_path, monkeypatch
):
    import hashlib
    import shutil

    from napari_cellsparse._napari.widgets.sam_annotator import widget as sam_annotator
    from napari_cellsparse.sam.weights import weights_dir

    _, widget, _ = annotator
    served = tmp_path / "served"
    served.mkdir()
    source = Path(widget.weights_edit.text())
    shutil.copyfile(source, served / "mobile_sam.pt")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    server = http_server(served)
    real = sam_annotator.download_weights
    url = {"now": server.url("mobile_sam.pt")}
    monkeypatch.setattr(
        sam_annotator, "download_weights", lambda model: real(model, url["now"], digest)
    )
    widget.model_combo.setCurrentText("vit_t")
    widget.download_button.click()
    assert "Saved mobile_sam.pt" in widget.status.text()
    assert (weights_dir() / "mobile_sam.pt").read_bytes() == source.read_bytes()

    (weights_dir() / "mobile_sam.pt").unlink()
    url["now"] = f"http://127.0.0.1:{closed_port}/mobile_sam.pt"
    widget.download_button.click()
    assert "mobile_sam.pt" in widget.status.text() and "Saved" not in widget.status.text()
    assert not widget.runner.busy and widget.download_button.isEnabled()
    assert list(weights_dir().glob("*")) == []


def test_automask_layers_and_keeping_objects(annotator):
    """Automask (label-oracle decoder: random weights decode noise) -> layers -> annotation."""
    from napari_cellsparse._testing import LabelOracle, OracleDecoder

    viewer, widget, truth = annotator
    annotation = viewer.add_labels(np.zeros((256, 256), dtype=np.int32), name="my cells")
    first = truth == 1
    annotation.data[first] = 7  # already annotated by the user: must stay as it is
    widget._refresh_layers()
    widget.labels_combo.setCurrentText("my cells")
    widget.compute_embedding()
    prompter = widget.state.prompter
    prompter.decoder = OracleDecoder(prompter.decoder, LabelOracle(truth))

    widget.automask_spins["crop_n_layers"].setValue(4)
    widget.automask_spins["points_per_side"].setValue(4)
    widget.automask_spins["crop_n_points_downscale_factor"].setValue(2)
    widget.run_automask()
    assert "deepest layer" in widget.status.text()
    assert "SAM automask" not in viewer.layers

    widget.preset_combo.setCurrentText("cells")
    assert widget.automask_spins["crop_n_layers"].value() == 0
    widget.preset_combo.setCurrentText("nuclei")
    widget.automask_spins["points_per_side"].setValue(24)
    widget.run_automask()
    found = viewer.layers["SAM automask"].data
    n = int(found.max())
    assert n >= 8, widget.status.text()
    assert len(viewer.layers["SAM automask outlines"].data) == n
    assert widget.state.prompter is prompter  # the embedding was reused, not recomputed

    before = annotation.data.copy()
    widget.keep_automask()
    after = annotation.data
    assert (after[first] == 7).all()
    added = set(np.unique(after[after != before]).tolist())
    assert len(added) >= n - 1 and min(added) == 8
    annotation.undo()
    np.testing.assert_array_equal(annotation.data, before)


def test_automask_threshold_changes_filter_again_without_decoding(annotator):
    """Only thresholds changed: the kept candidates are filtered again and nothing is
    decoded; a new grid, or new pixels in the image, decode again."""
    from napari_cellsparse._testing import LabelOracle, OracleDecoder

    viewer, widget, truth = annotator
    widget.compute_embedding()
    prompter = widget.state.prompter
    oracle = LabelOracle(truth)
    decoded: list[int] = []

    def counting(points):
        decoded.append(len(points))
        return oracle(points)

    prompter.decoder = OracleDecoder(prompter.decoder, counting)
    widget.automask_spins["points_per_side"].setValue(16)
    widget.run_automask()
    assert sum(decoded) == 16 * 16, widget.status.text()
    setup = widget.state.automask
    everything = int(viewer.layers["SAM automask"].data.max())
    assert everything >= 8

    # The oracle's best IoU prediction is 0.96: above it nothing passes.
    widget.automask_spins["pred_iou_thresh"].setValue(0.97)
    widget.automask_spins["box_nms_thresh"].setValue(0.5)
    widget.run_automask()
    assert int(viewer.layers["SAM automask"].data.max()) == 0, widget.status.text()
    widget.automask_spins["pred_iou_thresh"].setValue(0.88)
    widget.automask_spins["box_nms_thresh"].setValue(0.7)
    widget.run_automask()
    assert int(viewer.layers["SAM automask"].data.max()) == everything
    assert sum(decoded) == 16 * 16 and widget.state.automask is setup

    widget.automask_spins["points_per_side"].setValue(12)
    widget.run_automask()
    assert sum(decoded) == 16 * 16 + 12 * 12
    viewer.layers["nuclei"].data = viewer.layers["nuclei"].data[::-1].copy()
    widget.run_automask()
    assert sum(decoded) == 16 * 16 + 2 * 12 * 12
    assert widget.state.automask is not setup


def test_large_image_is_prompted_tile_by_tile(make_napari_viewer, vit_t_checkpoint):
    """A 640 x 640 dask image with 256 px tiles: a box embeds one tile, automask merges."""
    import dask.array as da

    from napari_cellsparse._napari.widgets.sam_annotator import SamAnnotatorWidget
    from napari_cellsparse._testing import RegionOracleDecoder
    from napari_cellsparse.samples.generated import make_nuclei

    viewer = make_napari_viewer()
    image, truth = make_nuclei(shape=(640, 640), n_objects=40, radius=(8.0, 12.0), seed=4)
    viewer.add_image(da.from_array(image, chunks=128), name="slide")
    widget = SamAnnotatorWidget(viewer)
    widget.weights_edit.setText(str(vit_t_checkpoint))
    widget.runner.synchronous = True
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(32)

    widget.prompts_layer().add_rectangles(_rectangle(560, 570, 620, 630))
    tiled = widget.state.tiled
    assert tiled is not None and len(tiled.tiles) == 9, widget.status.text()
    assert tiled.computed == 1  # only the tile that holds the box
    annotation = viewer.layers["SAM annotation"].data
    assert annotation.shape == (640, 640)
    (mask,) = tiled.boxes([[560, 570, 620, 630]])
    np.testing.assert_array_equal(annotation > 0, mask.full())

    widget.point_mode.setChecked(True)
    viewer.layers["SAM points"].add([[40, 40]])  # top-left tile: embedded on demand
    assert tiled.computed == 2
    assert viewer.layers["SAM preview"].data.shape == (640, 640)
    assert widget.state.preview is not None and widget.state.preview.shape == (640, 640)

    prompter = widget.state.prompter
    prompter.decoder = RegionOracleDecoder(prompter.decoder, truth, tiled)
    widget.automask_spins["points_per_side"].setValue(16)
    widget.run_automask()
    assert widget.state.tiled is tiled and tiled.computed == 9  # tiles kept, the rest embedded
    found = viewer.layers["SAM automask"].data
    assert found.shape == (640, 640)
    whole = 0
    for k in range(1, int(truth.max()) + 1):
        ids, counts = np.unique(found[truth == k], return_counts=True)
        if ids[0] != 0 and len(ids) == 1 and counts[0] == (truth == k).sum():
            whole += 1  # one label covers the object: not cut at a tile border
    assert whole >= 0.8 * truth.max(), widget.status.text()


def test_weights_field_says_whether_a_checkpoint_is_cached(annotator, vit_t_checkpoint):
    import shutil

    from napari_cellsparse.sam.weights import CHECKPOINTS, weights_dir

    _viewer, widget, _truth = annotator
    widget.model_combo.setCurrentText("vit_b")
    widget.model_combo.setCurrentText("vit_t")
    assert widget.weights_edit.placeholderText().startswith("no vit_t checkpoint yet")
    weights_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(vit_t_checkpoint, weights_dir() / CHECKPOINTS["vit_t"].filename)
    widget.model_combo.setCurrentText("vit_b")
    assert widget.weights_edit.placeholderText().startswith("no vit_b checkpoint yet")
    widget.model_combo.setCurrentText("vit_t")
    assert widget.weights_edit.placeholderText() == "official vit_t checkpoint (cached)"
