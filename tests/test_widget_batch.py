"""The Batch widget in a real napari viewer (Xvfb): a layer block by block, a folder, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.samples.generated import make_nuclei

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    from napari_cellsparse._napari.widgets import _worker

    shown: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    return shown


@pytest.fixture
def widget(make_napari_viewer, nuclei_model_home: Path, monkeypatch):
    from napari_cellsparse._napari.widgets.batch import BatchWidget

    monkeypatch.setenv(HOME_ENV, str(nuclei_model_home))
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.runner.synchronous = True
    return viewer, w


def test_a_layer_is_segmented_block_by_block_with_measurements(widget, tmp_path: Path) -> None:
    from stardist.matching import matching

    viewer, w = widget
    image, truth = make_nuclei((300, 260), n_objects=40, radius=(7.0, 9.0), seed=4)
    viewer.add_image(image, name="nuclei", scale=(0.5, 0.5))
    assert w.model_combo.currentText() == "nuclei"
    w.block_spin.setValue(128)
    w.run_layer()
    layer = viewer.layers["nuclei labels"]
    assert tuple(layer.scale) == (0.5, 0.5)
    assert "cellsparse_output" in layer.metadata  # a result, never offered as an annotation
    assert matching(truth, np.asarray(layer.data), thresh=0.5).f1 >= 0.85
    features = layer.features
    assert len(features) == layer.data.max() and "Area µm^2" in features.columns
    assert f"{layer.data.max()} objects in 9 block(s)" in w.status.text()
    saved = w.save_table(tmp_path / "cells.tsv")
    assert len(pd.read_csv(saved, sep="\t")) == len(features)


def test_a_folder_runs_skips_finished_images_and_opens_results(
    widget, tmp_path: Path, errors
) -> None:
    viewer, w = widget
    (tmp_path / "in").mkdir()
    for k in range(2):
        image, _ = make_nuclei((160, 160), n_objects=12, radius=(7.0, 9.0), seed=20 + k)
        tifffile.imwrite(tmp_path / "in" / f"f{k}.tif", image)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 broken")
    w.input_edit.setText(str(tmp_path / "in"))
    w.output_edit.setText(str(tmp_path / "out"))
    w.scheduler_edit.setText("none")
    w.run_folder()
    assert "2 done, 0 skipped (already done), 1 failed" in w.status.text()
    assert "broken.tif" in w.status.text()
    assert (tmp_path / "out" / "f1_labels.tif").exists()
    assert sorted(w.open_results()) == ["f0_labels", "f1_labels"]
    assert viewer.layers["f0_labels"].data.shape == (160, 160)
    w.run_folder()
    assert "0 done, 2 skipped" in w.status.text()
    assert errors == []


def test_a_folder_to_ome_zarr_masks_and_a_qupath_project(widget, tmp_path: Path, errors) -> None:
    import json

    from stardist.matching import matching

    from napari_cellsparse.formats.ome_zarr import open_ome_zarr

    viewer, w = widget
    (tmp_path / "in").mkdir()
    truths = {}
    for k in range(2):
        image, truths[f"g{k}"] = make_nuclei(
            (160, 160), n_objects=12, radius=(7.0, 9.0), seed=30 + k
        )
        tifffile.imwrite(tmp_path / "in" / f"g{k}.tif", image)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 broken")
    w.input_edit.setText(str(tmp_path / "in"))
    w.output_edit.setText(str(tmp_path / "out"))
    w.scheduler_edit.setText("none")
    w.mask_combo.setCurrentText("ome-zarr")
    w.project_check.setChecked(True)
    w.run_folder()
    assert errors == []
    assert "2 done" in w.status.text() and "1 image(s) left out" in w.status.text()
    for name, truth in truths.items():
        labels = np.asarray(open_ome_zarr(tmp_path / "out" / f"{name}_labels.ome.zarr").array)
        assert matching(truth, labels.squeeze(), thresh=0.5).f1 >= 0.8
    project = json.loads((tmp_path / "out" / "qupath" / "project.qpproj").read_text())
    assert sorted(e["imageName"] for e in project["images"]) == ["g0.tif", "g1.tif"]
    assert sorted(w.open_results()) == ["g0_labels", "g1_labels"]
    assert viewer.layers["g0_labels"].data.shape[-2:] == (160, 160)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "qupath").mkdir()
    (tmp_path / "elsewhere" / "qupath" / "mine.txt").write_text("a user's file")
    w.output_edit.setText(str(tmp_path / "elsewhere"))
    w.run_folder()  # refused before any work: the project folder holds someone's files
    assert errors and "not empty" in errors[-1]
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["qupath"]


def test_bad_choices_give_messages_not_crashes(widget, errors, monkeypatch, tmp_path) -> None:
    viewer, w = widget
    w.run_layer()
    assert errors and "image layer" in errors[-1]
    w.run_folder()
    assert "folder of images" in errors[-1]
    viewer.add_image(np.zeros((64, 64, 5), np.uint8), name="five", rgb=False)
    w.image_combo.setCurrentText("five")
    w.run_layer()
    assert "5 channels" in errors[-1] or "Cannot tell" in errors[-1]
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "empty-home"))
    w.refresh_models()
    w.run_layer()
    assert "No trained model" in errors[-1]
    assert w.save_table(tmp_path / "x.csv") is None and "Nothing segmented" in errors[-1]


def test_results_are_not_offered_as_images(widget) -> None:
    from napari_cellsparse._napari.widgets._layers import OUTPUT_KEY

    viewer, w = widget
    viewer.add_image(np.zeros((8, 8)), name="where map", metadata={OUTPUT_KEY: "test"})
    viewer.add_image(np.zeros((8, 8)), name="nuclei")
    assert [w.image_combo.itemText(i) for i in range(w.image_combo.count())] == ["nuclei"]
