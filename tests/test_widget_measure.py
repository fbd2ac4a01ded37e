"""The Measure cells widget in a real napari viewer (Xvfb): features, save, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


@pytest.fixture
def measurer(make_napari_viewer):
    from napari_cellsparse._napari.widgets.measure_cells import MeasureCellsWidget

    viewer = make_napari_viewer()
    cells = np.zeros((20, 24), np.int32)
    cells[2:8, 3:9] = 5  # 36 px
    cells[10:14, 12:20] = 9  # 32 px
    image = (10 * np.arange(20)[:, None] + np.arange(24)[None, :]).astype(np.uint16)
    viewer.add_image(image, name="DAPI")
    viewer.add_image(image * 2, name="CD45")
    viewer.add_labels(cells, name="cells", scale=(0.5, 0.5))
    widget = MeasureCellsWidget(viewer)
    widget.runner.synchronous = True
    return viewer, widget


def _errors(monkeypatch) -> list[str]:
    from napari_cellsparse._napari.widgets import _worker

    shown: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    return shown


def test_measure_sets_features_and_saves(measurer, tmp_path: Path) -> None:
    viewer, widget = measurer
    assert widget.labels_combo.currentText() == "cells"
    assert widget.pixel_spin.value() == pytest.approx(0.5)  # from the layer's scale
    assert [ly.name for ly in widget.chosen_images()] == ["DAPI"]
    widget.images_list.item(1).setSelected(True)
    widget.measure()

    layer = viewer.layers["cells"]
    features = layer.features
    assert features["index"].tolist() == [5, 9]
    assert features["Object ID"].tolist() == [5, 9]
    assert features["Area px^2"].tolist() == [36, 32]
    assert features["Area µm^2"].tolist() == [9, 8]
    assert features["CD45: Mean"].tolist()[0] == pytest.approx(2 * features["DAPI: Mean"][0])
    assert "Measured 2 object(s)" in widget.status.text()
    # napari finds each label's row through "index": the status bar shows cell 9's area.
    assert "Area px^2: 32" in "".join(layer._get_properties((11, 13)))

    path = widget.save_table(tmp_path / "cells.tsv")
    assert path == tmp_path / "cells.tsv" and "Saved 2 row(s)" in widget.status.text()
    table = pd.read_csv(path, sep="\t")
    assert table["DAPI: Max"].tolist() == [10 * 7 + 8, 10 * 13 + 19]  # bottom-right pixels
    assert "index" not in table.columns

    from napari_cellsparse._napari.geojson_io import write_labels

    (written,) = write_labels(str(tmp_path / "cells.geojson"), layer.data, layer._get_state())
    features = json.loads(Path(written).read_text())["features"]
    assert features[1]["properties"]["measurements"]["DAPI: Max"] == 149


def test_compartments_and_no_pixel_size(measurer, tmp_path: Path) -> None:
    viewer, widget = measurer
    nuclei = np.zeros((20, 24), np.int32)
    nuclei[4:6, 5:7] = 1
    viewer.add_labels(nuclei, name="nuclei")
    widget.labels_combo.setCurrentText("cells")
    widget.nuclei_combo.setCurrentText("nuclei")
    widget.pixel_spin.setValue(0)
    widget.images_list.clearSelection()
    widget.measure()
    features = viewer.layers["cells"].features
    assert features["Cytoplasm: Area px^2"].tolist() == [32, 32]
    assert features["Nucleus ID"].tolist()[0] == 1
    assert not any("µm" in c or ": Mean" in c for c in features.columns)
    assert widget.save_table(tmp_path / "t.csv").read_text().startswith("Object ID,Nucleus ID")


def test_errors_are_messages(measurer, monkeypatch, tmp_path: Path) -> None:
    viewer, widget = measurer
    shown = _errors(monkeypatch)
    assert widget.save_table(tmp_path / "t.csv") is None
    assert "Measure first" in shown[-1]
    viewer.add_image(np.zeros((5, 5)), name="small")
    widget.images_list.item(2).setSelected(True)
    widget.measure()
    assert "does not cover the same pixels" in shown[-1]
    widget.images_list.clearSelection()
    viewer.add_labels(np.zeros((2, 5, 5), np.int32), name="stack")
    widget.labels_combo.setCurrentText("stack")
    widget.measure()
    assert "2D label image" in shown[-1]
    assert widget.measure_button.isEnabled()
    widget.labels_combo.setCurrentText("cells")
    widget.measure()
    assert widget.save_table(tmp_path / "t.xlsx") is None
    assert ".csv or .tsv" in shown[-1]
    assert not (tmp_path / "t.xlsx").exists()


def test_measure_in_a_worker_thread(measurer, qtbot) -> None:
    viewer, widget = measurer
    widget.runner.synchronous = False
    widget.measure()
    assert not widget.measure_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    assert viewer.layers["cells"].features["Object ID"].tolist() == [5, 9]
    assert widget.measure_button.isEnabled() and widget.save_button.isEnabled()


def test_the_newest_result_is_measured_and_an_annotation_without_its_background(
    measurer,
) -> None:
    """The newest prediction the plugin wrote is measured by default until a person picks a
    layer; a sparse annotation's id 1 (painted background) is never measured as an object."""
    from napari_cellsparse._napari.widgets._layers import OUTPUT_KEY
    from napari_cellsparse.core.sparse_labels import SPARSE_KEY

    viewer, widget = measurer
    sparse = np.zeros((20, 24), np.int32)
    sparse[:, :2] = 1  # painted background
    sparse[2:8, 3:9] = 2
    viewer.add_labels(sparse, name="annotation", metadata={SPARSE_KEY: True})
    for name in ("first prediction", "second prediction"):
        viewer.add_labels(np.zeros((20, 24), np.int32), name=name, metadata={OUTPUT_KEY: "x"})
    assert widget.labels_combo.currentText() == "second prediction"
    widget.labels_combo.textActivated.emit("annotation")  # a person picks it from the list
    widget.labels_combo.setCurrentText("annotation")
    viewer.add_labels(np.zeros((20, 24), np.int32), name="third", metadata={OUTPUT_KEY: "x"})
    assert widget.labels_combo.currentText() == "annotation"  # the person's choice stays
    widget.measure()
    assert list(widget.state.table["Object ID"]) == [2], widget.state.table
