"""The Cell counting widget in a real napari viewer (Xvfb): train, stop, count, batch, errors.

A tiny counter (depth-3 encoder, 64 px patches, a few steps) keeps every training to seconds;
results are checked by layers, metadata and files, not by accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")
pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

TINY = "encoder_depth=3, decoder_width=8, patch_size=64, batch_size=2"


@pytest.fixture
def counting(make_napari_viewer):
    from napari_cellsparse._napari.widgets.cell_counting import CellCountingWidget
    from napari_cellsparse.samples.generated import make_nuclei

    viewer = make_napari_viewer()
    image, labels = make_nuclei((96, 96), n_objects=8, radius=(5.0, 7.0), seed=1)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
    viewer.add_image(image, name="nuclei")
    viewer.add_points(centres[:3], name="centres I clicked")
    background = (ndi.distance_transform_edt(labels == 0) > 6).astype(np.uint8)
    viewer.add_labels(background, name="background")
    widget = CellCountingWidget(viewer)
    widget.runner.synchronous = True
    widget.steps_spin.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    widget.background_combo.setCurrentText("background")
    widget.settings_edit.setText(TINY)
    return viewer, widget


def _errors(monkeypatch) -> list[str]:
    from napari_cellsparse._napari.widgets import _worker

    shown: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    return shown


def test_train_in_a_worker_then_count(counting, qtbot):
    from napari_cellsparse.training import list_models

    viewer, widget = counting
    assert widget.image_combo.currentText() == "nuclei"
    assert widget.points_combo.currentText() == "centres I clicked"
    clicked = viewer.layers["centres I clicked"].data.copy()
    widget.runner.synchronous = False
    widget.train()
    assert widget.runner.busy and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert "Trained for 4 step(s)" in widget.status.text(), widget.status.text()
    assert widget.progress_bar.value() == 4
    assert {"name": "counter", "backend": "counter", "steps": 4}.items() <= list_models()[0].items()
    assert widget.model_combo.currentText() == "counter"
    np.testing.assert_array_equal(viewer.layers["centres I clicked"].data, clicked)

    widget.runner.synchronous = True
    widget.count()
    density = viewer.layers["nuclei density"]
    centres = viewer.layers["nuclei centres"]
    assert density.data.shape == (96, 96) and density.data.dtype == np.float32
    count = density.metadata["count"]
    # the centres plus the density none of them accounts for
    assert len(centres.data) <= count <= len(centres.data) + float(density.data.sum()) + 1e-3
    assert centres.metadata["count"] == count
    assert centres.metadata["n_centres"] == len(centres.data)
    assert f"Count: {count:.1f}" in widget.count_label.text()
    # 4 steps of training: much of the count may be density without a centre, and then says so
    uncentred = count - len(centres.data) > max(2.0, 0.2 * count)
    assert ("density without a centre" in widget.status.text()) == uncentred
    assert widget.image_combo.currentText() == "nuclei"  # result layers are not offered
    widget.count()  # again: the layers are replaced, not duplicated
    assert [ly.name for ly in viewer.layers].count("nuclei density") == 1

    widget.where_to_click()
    doubt = viewer.layers["nuclei where to click next"]
    places = viewer.layers["nuclei places to click"]
    assert doubt.data.shape == (96, 96) and len(places.data) <= 10
    assert doubt.metadata["where_to_click"] and places.metadata["where_to_click"]
    offered = [widget.points_combo.itemText(i) for i in range(widget.points_combo.count())]
    assert places.name not in offered  # not a layer of clicked centres
    text = widget.status.text()
    assert "are numbered" in text or "no place to suggest" in text, text
    if len(places.data):  # places near the points given are known, left out
        gap = np.linalg.norm(places.data[:, None] - clicked[None], axis=-1).min()
        assert gap > 2.0


def test_stop_saves_the_counter_so_far(counting):
    from napari_cellsparse.training import list_models

    _viewer, widget = counting
    handler = widget._on_progress

    def stop_at_two(event):
        handler(event)
        if event.info.get("loss") is not None and event.step == 2:
            widget.runner.cancel()

    widget._on_progress = stop_at_two
    widget.train()
    info = widget.state.last["info"]
    assert info["stopped_early"] is True
    # The worker process gets the Stop while it may already be in the next step.
    done = info["sessions"][-1]["steps"]
    assert 2 <= done < 4
    assert list_models()[0]["steps"] == done
    assert f"Stopped after {done} step(s)" in widget.status.text()


def test_batch_writes_all_outputs_and_reports_bad_files(counting, tmp_path, monkeypatch):
    import tifffile

    from napari_cellsparse.samples.generated import make_nuclei

    warned: list[str] = []
    from napari_cellsparse._napari.widgets import cell_counting

    monkeypatch.setattr(cell_counting, "show_warning", warned.append)
    _viewer, widget = counting
    widget.train()
    folder = tmp_path / "plate"
    folder.mkdir()
    for seed in (2, 3):
        tifffile.imwrite(folder / f"well_{seed}.tif", make_nuclei((80, 80), 5, (5.0, 7.0), seed)[0])
    (folder / "readme.txt").write_text("hello")
    widget.folder_edit.setText(str(folder))
    widget.count_folder()
    out = folder / "counts"
    counts = json.loads((out / "counts.json").read_text())
    assert sorted(counts) == [str(folder / "well_2.tif"), str(folder / "well_3.tif")]
    assert (out / "counts.csv").read_text().splitlines()[0] == "image,count,n_centres,doubt"
    assert sorted(p.name for p in out.glob("*.png")) == ["well_2_count.png", "well_3_count.png"]
    assert "Counted 2 image(s)" in widget.status.text() and "Skipped 1" in widget.status.text()
    assert warned and "readme.txt" in warned[0]


def test_bad_inputs_are_messages_not_crashes(counting, monkeypatch):
    shown = _errors(monkeypatch)
    viewer, widget = counting
    widget.settings_edit.setText(f"{TINY}, steps=3")  # the Steps box says how many
    widget.train()
    assert "steps cannot be among the other settings" in shown[-1]
    widget.settings_edit.setText(TINY)
    viewer.layers["centres I clicked"].data = np.zeros((0, 2))
    widget.train()
    assert "Points layer is empty" in shown[-1]
    viewer.layers["centres I clicked"].data = np.array([[10.0, 500.0]])
    widget.train()
    assert "outside" in shown[-1]
    widget.count()
    assert "No trained counter" in shown[-1]
    widget.folder_edit.setText("/no/such/folder")
    widget.model_combo.addItem("ghost")
    widget.count_folder()
    assert "Choose a folder" in shown[-1]
    viewer.layers.remove("centres I clicked")
    widget.train()
    assert "Points layer" in shown[-1]
    assert not widget.runner.busy


def test_other_widgets_results_are_not_offered_as_inputs(counting, monkeypatch):
    """The segmentation's "where next" map and numbered places are results, not an image and
    clicked centres: with the image gone, Train asks for one instead of training on them."""
    from napari_cellsparse._napari.widgets._layers import show_places

    shown = _errors(monkeypatch)
    viewer, widget = counting
    image = viewer.layers["nuclei"]
    show_places(viewer, np.zeros((96, 96)), [[5.0, 5.0]], ("map", "places"), image)
    viewer.layers.remove("nuclei")
    viewer.layers.remove("centres I clicked")
    assert widget.image_combo.count() == 0 and widget.points_combo.count() == 0
    widget.train()
    assert "Choose an image layer first" in shown[-1]


def test_count_on_follows_the_training_image_until_picked(counting):
    viewer, widget = counting
    viewer.add_image(np.zeros((96, 96)), name="well A1")
    viewer.add_image(np.zeros((96, 96)), name="well A2")
    assert widget.count_image_combo.currentText() == "nuclei"
    widget.image_combo.setCurrentText("well A1")  # as a person's pick does
    assert widget.count_image_combo.currentText() == "well A1"
    widget.count_image_combo.textActivated.emit("well A2")  # the person picks one
    widget.count_image_combo.setCurrentText("well A2")
    widget.image_combo.setCurrentText("nuclei")
    assert widget.count_image_combo.currentText() == "well A2"
