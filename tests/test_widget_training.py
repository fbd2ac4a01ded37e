"""The Sparse training widget in a real napari viewer (Xvfb): train, stop, reset, predict, errors.

Tiny U-Net settings (patch 64, batch 2, 8 base filters, depth 2) on a 96x96 generated image
keep every training to a fraction of a second; results are checked by step counts and
layer contents, never by wall time.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")
pytest.importorskip("torch")

TINY = "base_filters=8, depth=2"


def _tiny(widget, steps: int = 6, preview: int = 3, name: str = "tiny") -> None:
    widget.backend_combo.setCurrentText("unet")
    widget.name_edit.setText(name)
    widget.steps_spin.setValue(steps)
    widget.preview_spin.setValue(preview)
    widget.patch_spin.setValue(64)
    widget.batch_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.settings_edit.setText(TINY)


@pytest.fixture
def trainer(make_napari_viewer):
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth

    viewer = make_napari_viewer()
    image, truth = make_nuclei((96, 96), n_objects=6, radius=(6.0, 10.0), seed=1)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(sparse_from_truth(image, truth, k=2, band=6), name="my annotation")
    widget = SparseTrainingWidget(viewer)
    widget.runner.synchronous = True
    _tiny(widget)
    return viewer, widget


def _errors(monkeypatch) -> list[str]:
    """Collect napari error notifications sent by the widget and its job runner."""
    from napari_cellsparse._napari.widgets import _worker

    shown: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    return shown


def test_train_in_a_thread_shows_preview_and_saves(trainer, qtbot):
    from napari_cellsparse.training import list_models

    viewer, widget = trainer
    assert widget.image_combo.currentText() == "nuclei"
    assert widget.labels_combo.currentText() == "my annotation"  # auto-picked
    annotation = viewer.layers["my annotation"]
    before = annotation.data.copy()
    widget.runner.synchronous = False
    widget.train()
    assert widget.runner.busy and not widget.train_button.isEnabled()
    assert widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)

    assert "Trained 'tiny' for 6 step(s)" in widget.status.text(), widget.status.text()
    assert "cpu" in widget.status.text()
    preview = viewer.layers["Training preview"]
    assert preview.data.shape == (96, 96)
    assert widget.loss_plot.steps == [1, 2, 3, 4, 5, 6]
    assert np.isfinite(widget.loss_plot.losses).all()
    assert widget.progress_bar.value() == 6
    models = {m["name"]: m for m in list_models()}
    assert models["tiny"]["steps"] == 6 and models["tiny"]["backend"] == "unet"
    assert widget.model_combo.currentText() == "tiny"
    np.testing.assert_array_equal(annotation.data, before)
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()


def test_stop_keeps_the_model_and_reset_starts_afresh(trainer):
    from napari_cellsparse.training import list_models

    _viewer, widget = trainer
    handler = widget._on_progress

    def stop_at_two(event, image):
        handler(event, image)
        if event.info.get("loss") is not None and event.step == 2:
            widget.stop()

    widget._on_progress = stop_at_two
    widget.train()
    summary = widget.state.last
    assert summary is not None and summary["info"]["stopped_early"] is True
    # The worker process gets the Stop while it may already be in the next step.
    done = summary["info"]["sessions"][-1]["steps"]
    assert 2 <= done < 6
    assert widget.loss_plot.steps == list(range(1, done + 1))
    assert f"Stopped after {done} step(s)" in widget.status.text()
    assert list_models()[0]["steps"] == done  # saved, not lost

    widget._on_progress = handler
    widget.steps_spin.setValue(3)
    widget.train()  # continues from the saved weights
    assert list_models()[0]["steps"] == done + 3
    assert len(list_models()[0]["sessions"]) == 2

    widget.reset()
    assert "from scratch" in widget.status.text()
    widget.train()
    meta = list_models()[0]
    assert meta["steps"] == 3 and len(meta["sessions"]) == 1
    assert widget.state.reset_next is False


def test_predict_writes_labels_and_outlines(trainer, make_napari_viewer):
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget
    from napari_cellsparse.samples.generated import make_nuclei

    viewer, widget = trainer
    widget.steps_spin.setValue(4)
    widget.train()
    annotation = viewer.layers["my annotation"].data.copy()
    widget.min_area_spin.setValue(5)
    widget.predict()
    prediction = viewer.layers["nuclei prediction"]
    labels = prediction.data
    assert labels.shape == (96, 96) and np.issubdtype(labels.dtype, np.integer)
    n = len(np.unique(labels[labels > 0]))
    assert prediction.contour == 1  # drawn as outlines
    assert f"Predicted {n} object(s)" in widget.status.text()
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes[sizes > 0].min() >= 5
    assert "Predicted" in widget.status.text()
    assert ("Nothing found" in widget.status.text()) == (n == 0)
    np.testing.assert_array_equal(viewer.layers["my annotation"].data, annotation)
    widget.min_area_spin.setValue(96 * 96 + 1)  # every object dropped: the status says what to do
    widget.predict()
    assert "Predicted 0 object(s)" in widget.status.text()
    assert "Nothing found: train this model for more steps" in widget.status.text()

    # A stored model in another viewer, on a stack, with a given diameter.
    other = make_napari_viewer()
    stack = np.stack([make_nuclei((96, 96), 5, (6.0, 10.0), seed=s)[0] for s in range(3)])
    other.add_image(stack, name="stack")
    fresh = SparseTrainingWidget(other)
    fresh.runner.synchronous = True
    assert fresh.model_combo.currentText() == "tiny"
    fresh.predict_diameter_spin.setValue(16.0)
    fresh.predict()
    labels = other.layers["stack prediction"].data
    assert labels.shape == (3, 96, 96), fresh.status.text()
    assert other.layers["stack prediction"].contour == 1
    assert f"Predicted {len(np.unique(labels[labels > 0]))} object(s)" in fresh.status.text()
    assert "diameter 16.0 px" in fresh.status.text()


def test_annotation_stack_trains_per_slice(trainer):
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
    from napari_cellsparse.training import list_models

    viewer, widget = trainer
    made = [make_nuclei((96, 96), 5, (6.0, 10.0), seed=s) for s in range(3)]
    stack = np.stack([m[0] for m in made])
    sparse = np.zeros(stack.shape, np.uint16)
    sparse[1] = sparse_from_truth(made[1][0], made[1][1], k=2, band=6)
    viewer.add_image(stack, name="stack")
    viewer.add_labels(sparse, name="stack annotation")
    widget.image_combo.setCurrentText("stack")
    widget.labels_combo.setCurrentText("stack annotation")
    widget.add_pair()
    widget.image_combo.setCurrentText("nuclei")
    widget.labels_combo.setCurrentText("my annotation")
    widget.add_pair()
    assert widget.pairs_list.count() == 2
    viewer.dims.set_current_step(0, 1)
    widget.steps_spin.setValue(3)
    widget.train()
    assert widget.state.preview_z == 1
    meta = list_models()[0]
    assert meta["steps"] == 3, widget.status.text()
    assert meta["sessions"][-1]["images"] == [[96, 96, 1], [96, 96, 1]]  # one slice + image
    np.testing.assert_array_equal(viewer.layers["stack annotation"].data, sparse)
    widget.pairs_list.setCurrentRow(0)
    widget.remove_pair()
    assert widget.pairs_list.count() == 1


def test_bad_inputs_are_messages_not_crashes(make_napari_viewer, monkeypatch):
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget
    from napari_cellsparse.training import backend

    shown = _errors(monkeypatch)
    viewer = make_napari_viewer()
    widget = SparseTrainingWidget(viewer)
    widget.runner.synchronous = True
    _tiny(widget)

    def attempt(action, expected: str) -> None:
        before = len(shown)
        action()
        assert expected in widget.status.text(), widget.status.text()
        assert len(shown) == before + 1 and expected in shown[-1]

    attempt(widget.train, "No image layer")
    attempt(widget.predict, "No image layer")
    viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    widget._refresh_layers()
    attempt(widget.train, "No annotation layer")
    attempt(widget.predict, "No trained model")
    empty = viewer.add_labels(np.zeros((64, 64), np.int32), name="annotation")
    attempt(widget.train, "empty")
    empty.data[5:10, 5:10] = 2
    empty.data[20:30, 20:30] = 1
    widget.settings_edit.setText("base_filters")
    attempt(widget.train, "name=value")
    widget.settings_edit.setText("no_such_setting=1")
    attempt(widget.train, "Unknown setting")
    widget.settings_edit.setText(f"{TINY}, steps=3")  # the Steps box says how many
    attempt(widget.train, "steps cannot be among the other settings")
    widget.settings_edit.setText(TINY)
    widget.name_edit.setText("../escape")
    attempt(widget.train, "cannot be a model name")
    widget.name_edit.setText("tiny")
    viewer.add_labels(np.zeros((32, 64), np.int32), name="small annotation")
    widget.labels_combo.setCurrentText("small annotation")
    attempt(widget.train, "does not match")
    widget.labels_combo.setCurrentText("annotation")
    monkeypatch.setitem(backend.BACKENDS, "missing", "napari_cellsparse.training.nothing:Net")
    widget.backend_combo.addItem("missing")
    widget.backend_combo.setCurrentText("missing")
    attempt(widget.train, "not installed")
    assert not widget.runner.busy
    np.testing.assert_array_equal(empty.data[5:10, 5:10], 2)


def test_buttons_report_refusals_through_the_shared_guard(make_napari_viewer, monkeypatch):
    """A click (Qt hands the slot a ``checked`` flag unless it takes none) on each action
    of an empty viewer is one message in the status line and one notification."""
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget

    shown = _errors(monkeypatch)
    widget = SparseTrainingWidget(make_napari_viewer())
    widget.runner.synchronous = True
    buttons = {
        widget.add_pair_button: "No image layer",
        widget.train_button: "No image layer",
        widget.predict_button: "No image layer to predict on",
        widget.where_button: "No image layer to predict on",
        widget.export_button: "No trained model yet",
    }
    for button, expected in buttons.items():
        before = len(shown)
        button.click()
        assert expected in widget.status.text(), widget.status.text()
        assert len(shown) == before + 1 and expected in shown[-1]
    widget.runner.worker = "running"  # a job of this widget runs: actions only say so
    widget.export_button.click()
    assert widget.status.text() == "Still working; press Stop or wait."
    assert len(shown) == len(buttons)
    widget.runner.worker = None


def test_docked_through_napari_trains_on_the_sample(make_napari_viewer):
    """Docked by napari the widget sees a proxy viewer; the sample's annotation is auto-picked."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellsparse", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellsparse", "Sparse training")
    assert widget.labels_combo.currentText() == "Sparse annotation (from ground truth)"
    widget.runner.synchronous = True
    _tiny(widget, steps=2, preview=1)
    widget.add_pair()
    widget.add_pair()  # the same pair once only
    assert widget.pairs_list.count() == 1
    widget.train()
    assert "Trained 'tiny' for 2 step(s)" in widget.status.text(), widget.status.text()
    assert viewer.layers["Training preview"].data.shape == (512, 512)


def test_model_lists_hold_only_models_each_widget_can_use(trainer, qtbot):
    """Predict's list holds segmentation models, the counter's list counters: a counter
    chosen in Predict used to fail."""
    from napari_cellsparse._napari.widgets.cell_counting import CellCountingWidget
    from napari_cellsparse.counting import train_counter
    from napari_cellsparse.samples.generated import make_nuclei

    viewer, widget = trainer
    image, truth = make_nuclei((64, 64), n_objects=4, radius=(5.0, 7.0), seed=2)
    centres = np.argwhere(truth > 0)[:: max(1, int((truth > 0).sum()) // 4)][:4].astype(float)
    train_counter([image], [centres], name="a-counter", steps=1)
    widget.train()
    counting = CellCountingWidget(viewer)
    widget._refresh_models()
    segmentation = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    counters = [counting.model_combo.itemText(i) for i in range(counting.model_combo.count())]
    assert segmentation == ["tiny"]
    assert counters == ["a-counter"]
    assert widget.model_combo.currentText() == "tiny"


def test_export_button_writes_a_bioimageio_package(trainer, tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.spec")
    import zipfile

    widget = trainer[1]
    widget.steps_spin.setValue(4)
    widget.train()
    shown = _errors(monkeypatch)
    out = tmp_path / "tiny.zip"
    widget.export(path=str(out))
    assert zipfile.is_zipfile(out), (shown, widget.status.text())
    assert "Exported 'tiny'" in widget.status.text()
    with zipfile.ZipFile(out) as z:
        assert "rdf.yaml" in z.namelist()
    widget.export(path=str(tmp_path / "no folder" / "x.tar"))
    assert shown and ".zip" in shown[-1] and not (tmp_path / "no folder" / "x.tar").exists()


def test_where_to_annotate_next_shows_a_map_and_numbered_places(trainer):
    from _generated import clean_and_ambiguous

    viewer, widget = trainer
    widget.steps_spin.setValue(30)
    widget.train()
    viewer.add_image(clean_and_ambiguous(3), name="mixed")
    painted = np.zeros((160, 320), np.uint16)
    painted[:80, 160:240] = 1  # background painted over a corner of the doubtful half
    viewer.add_labels(painted, name="mixed annotation")
    for combo, name in [
        (widget.image_combo, "mixed"),
        (widget.labels_combo, "mixed annotation"),
        (widget.predict_image_combo, "mixed"),
    ]:
        combo.setCurrentText(name)
    widget.where_next()
    doubt = viewer.layers["mixed where to annotate next"]
    places = viewer.layers["mixed places to annotate"]
    assert doubt.data.shape == (160, 320) and doubt.data.dtype == np.float32
    assert doubt.colormap.name == "magma" and str(doubt.blending) == "additive"
    assert doubt.data.min() >= 0.0 and doubt.data.max() <= 1.0
    assert not doubt.data[painted > 0].any()  # painted pixels are known
    n = len(places.data)
    assert 0 < n <= 10 and f"top {n} are numbered" in widget.status.text()
    assert places.features["rank"].tolist() == list(range(1, n + 1))
    for y, x in places.data:
        assert painted[round(y), round(x)] == 0

    # A model sure of everything says so, instead of numbering nothing.
    from napari_cellsparse.training.uncertainty import UncertaintyResult

    sure = UncertaintyResult(np.zeros((160, 320), np.float32), (), 12.0)
    widget._show_where_next("mixed", viewer.layers["mixed"], sure)
    assert "no place to suggest" in widget.status.text()
    assert len(viewer.layers["mixed places to annotate"].data) == 0

    # Shown again in place; a stack is refused with a message, not a crash.
    widget.where_next()
    assert viewer.layers["mixed where to annotate next"] is doubt
    viewer.add_image(np.stack([viewer.layers["nuclei"].data] * 2), name="stack")
    widget.predict_image_combo.setCurrentText("stack")
    shown = []
    widget.runner.report = lambda err: shown.append(str(err))
    widget.where_next()
    assert shown and "one 2D image" in shown[0]
    assert "stack where to annotate next" not in viewer.layers


def test_self_training_from_the_backend_settings_trains_longer_and_keeps_the_layer(trainer):
    from napari_cellsparse.training import load_model

    viewer, widget = trainer
    widget.settings_edit.setText(f"{TINY}, self_training=0.5")
    annotation = viewer.layers["my annotation"]
    before = annotation.data.copy()
    widget.train()
    assert "Trained 'tiny' for 9 step(s)" in widget.status.text(), widget.status.text()
    assert widget.loss_plot.steps == list(range(1, 10))
    assert widget.progress_bar.maximum() == 9 and widget.progress_bar.value() == 9
    session = load_model("tiny").info["sessions"][-1]
    assert session["steps"] == 9 and session["self_training_cells"] >= 0
    np.testing.assert_array_equal(annotation.data, before)  # the person's layer is untouched


def test_status_names_the_device_and_the_cells_once(trainer):
    """A job waiting for the worker has no device yet; a message naming the device or the
    annotated cells is not given them twice."""
    from napari_cellsparse.core.progress import Progress

    viewer, widget = trainer
    image = viewer.layers["nuclei"]
    widget.state.device = ""
    widget._on_progress(Progress(0, 0, "Waiting for 'Loading X' to finish"), image)
    assert widget.status.text() == "Waiting for 'Loading X' to finish"
    widget._on_progress(Progress(0, 5, "Preparing unet on cpu", {"device": "cpu"}), image)
    assert widget.status.text() == "Preparing unet on cpu"
    widget._on_progress(Progress(0, 5, "Preparing the training data"), image)
    assert widget.status.text() == "Preparing the training data (cpu)"
    first = Progress(1, 5, "Training unet: step 1/5, on 4 annotated cells", {"loss": 1.0})
    first.info["annotation"] = {"cells": 4}
    widget._on_progress(first, image)
    assert widget.status.text().count("annotated cell") == 1, widget.status.text()
    widget._on_progress(Progress(2, 5, "Training unet: step 2/5", {"loss": 0.9}), image)
    assert widget.status.text().endswith("loss 0.9000, 4 annotated cell(s)")


def test_choosing_a_stored_model_loads_its_backend_in_the_worker(trainer, qtbot):
    """Picking a model for Predict (as a person does, from the list) loads its backend in the
    model worker in the background; a name the store does not hold loads nothing."""
    _viewer, widget = trainer
    widget.train()
    name = widget.model_combo.currentText()
    assert name == "tiny"
    widget.runner.synchronous = False  # the background load runs only outside tests' sync mode
    widget.model_combo.textActivated.emit("no such model")
    widget.model_combo.textActivated.emit(name)
    qtbot.waitUntil(lambda: bool(widget.runner.warmed), timeout=60_000)
    assert widget.runner.warmed == [
        {"backend": "unet", "seconds": widget.runner.warmed[0]["seconds"]}
    ]
    widget.runner.close()


def test_a_prediction_is_never_the_default_annotation(trainer, monkeypatch):
    """With no painted layer left, the new prediction is listed but not chosen as the
    annotation (its object 1 would be read as background): Train asks for a choice, a new
    Labels layer becomes the default, and a prediction picked by hand stays picked."""
    from napari_cellsparse._napari.widgets._layers import OUTPUT_KEY

    shown = _errors(monkeypatch)
    viewer, widget = trainer
    widget.train()
    viewer.layers.remove("my annotation")
    widget.predict()
    prediction = viewer.layers["nuclei prediction"]
    assert prediction.metadata[OUTPUT_KEY] == "prediction of 'tiny'"
    assert [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())] == [
        "nuclei prediction"
    ]
    assert widget.labels_combo.currentText() == ""
    widget.train()
    assert "No annotation layer chosen" in shown[-1]
    viewer.add_labels(np.zeros((96, 96), np.int32), name="Labels")
    assert widget.labels_combo.currentText() == "Labels"
    widget.labels_combo.setCurrentText("nuclei prediction")
    viewer.add_labels(np.zeros((96, 96), np.int32), name="Labels [1]")
    assert widget.labels_combo.currentText() == "nuclei prediction"


def test_a_renamed_layer_stays_chosen_under_its_new_name(trainer):
    viewer, widget = trainer
    viewer.layers["my annotation"].name = "cells"
    assert widget.labels_combo.currentText() == "cells"
    viewer.layers["nuclei"].name = "DAPI"
    assert widget.image_combo.currentText() == "DAPI"
    assert widget.predict_image_combo.currentText() == "DAPI"
    widget.train()
    assert "Trained 'tiny'" in widget.status.text(), widget.status.text()


def test_a_new_widget_offers_the_model_saved_last(trainer):
    """Reopened, the widget offers the model the person trained last, not the first by name."""
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget

    viewer, widget = trainer
    widget.train()
    widget.name_edit.setText("a-model")
    widget.train()
    widget.name_edit.setText("tiny")
    widget.steps_spin.setValue(2)
    widget.train()  # trained again: saved last
    fresh = SparseTrainingWidget(viewer)
    assert [fresh.model_combo.itemText(i) for i in range(fresh.model_combo.count())] == [
        "a-model",
        "tiny",
    ]
    assert fresh.model_combo.currentText() == "tiny"
    fresh.leave()


def test_predict_on_follows_the_training_image_until_picked(trainer):
    viewer, widget = trainer
    viewer.add_image(np.zeros((96, 96)), name="second")
    assert widget.predict_image_combo.currentText() == "nuclei"
    widget.image_combo.setCurrentText("second")
    assert widget.predict_image_combo.currentText() == "second"
    widget.predict_image_combo.textActivated.emit("nuclei")
    widget.predict_image_combo.setCurrentText("nuclei")
    widget.image_combo.setCurrentText("nuclei")
    widget.image_combo.setCurrentText("second")
    assert widget.predict_image_combo.currentText() == "nuclei"
