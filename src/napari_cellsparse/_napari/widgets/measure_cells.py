"""The "Measure cells" dock widget: QuPath-style measurements of a Labels layer.

Thin front end over :func:`~napari_cellsparse.scale.measure.measure_objects`: the measuring runs
in a background worker; the table becomes the Labels layer's ``features`` (one row per
object, its label in the ``index`` column, so napari shows a cell's values under the
cursor) and can be saved as CSV or TSV. Each chosen image layer is one channel, named
after its layer ("DAPI: Mean"); an optional nucleus Labels layer adds the Nucleus /
Cytoplasm / Cell compartments.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import BadInputError
from ...core.progress import Progress
from ...core.sparse_labels import FIRST_CELL_ID, SPARSE_KEY
from ...scale.measure import measure_objects
from ._dock import DockWidget, when_idle
from ._fields import NONE
from ._layers import OUTPUT_KEY, PREVIEW_OUTPUT, input_names, is_output, layer_data, refill_combo
from ._tables import save_table_as, show_table

if TYPE_CHECKING:
    import napari
    import pandas as pd

__all__ = ["MeasureCellsWidget"]

RGB_NAMES = ("Red", "Green", "Blue", "Alpha")


@dataclass
class MeasureState:
    """The last table and the Labels layer it describes (owned by one widget)."""

    table: pd.DataFrame | None = None
    labels_name: str = ""
    picked: bool = False  # the person chose the cells layer: a new result does not replace it


def _channels(layers: list[Image]) -> tuple[list[Any], list[str]]:
    """Each layer's data as YX planes (RGB layers give one plane per colour), with names."""
    planes: list[Any] = []
    names: list[str] = []
    for layer in layers:
        data = layer_data(layer)
        if getattr(layer, "rgb", False):
            count = int(data.shape[-1])
            planes += [data[..., c] for c in range(count)]
            names += [f"{layer.name} {RGB_NAMES[c]}" for c in range(count)]
        else:
            planes.append(data)
            names.append(layer.name)
    return planes, names


class MeasureCellsWidget(DockWidget):
    """Dock widget: choose a Labels layer (and images, nuclei); Measure; Save table."""

    hint = "Choose a Labels layer of cells, then Measure."
    busy_text = "Still measuring; wait for it."

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, MeasureState())

    def busy_buttons(self) -> list[QWidget]:
        return [self.measure_button]

    def _build(self) -> None:
        self.labels_combo = QComboBox()
        self.labels_combo.currentTextChanged.connect(self._default_pixel_size)
        self.labels_combo.textActivated.connect(self._picked)
        self.nuclei_combo = QComboBox()
        self.nuclei_combo.setToolTip("Nucleus labels: adds Nucleus / Cytoplasm / Cell columns.")
        self.images_list = QListWidget()
        self.images_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.images_list.setMaximumHeight(80)
        self.images_list.setToolTip(
            "Image layers to measure intensities in; each is one channel, named after its layer."
        )
        self.pixel_spin = QDoubleSpinBox()
        self.pixel_spin.setRange(0.0, 10_000.0)
        self.pixel_spin.setDecimals(4)
        self.pixel_spin.setSingleStep(0.05)
        self.pixel_spin.setSpecialValueText("none")
        self.pixel_spin.setSuffix(" µm")
        self.pixel_spin.setToolTip("µm per pixel; adds µm columns (none: pixels only).")
        form = QFormLayout()
        form.addRow("Cells (labels)", self.labels_combo)
        form.addRow("Nuclei", self.nuclei_combo)
        form.addRow("Intensity images", self.images_list)
        form.addRow("Pixel size", self.pixel_spin)

        self.measure_button = QPushButton("Measure")
        self.measure_button.clicked.connect(self.measure)
        self.save_button = QPushButton("Save table…")
        self.save_button.clicked.connect(lambda: self.save_table())
        self.save_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure_button)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch()

    # -- layers ------------------------------------------------------------------------
    def _refresh_layers(self, _event: Any = None) -> None:
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels)]
        names = [ly.name for ly in labels]
        images = input_names(self.viewer.layers, Image)
        newest = None if self.state.picked else _newest_result(labels)
        refill_combo(self.labels_combo, names, _default_cells(labels), select=newest)
        refill_combo(self.nuclei_combo, [NONE, *names])
        chosen = {item.text() for item in self.images_list.selectedItems()}
        first = not self.images_list.count()
        self.images_list.clear()
        self.images_list.addItems(images)
        for row, name in enumerate(images):
            if name in chosen or (first and row == 0):
                self.images_list.item(row).setSelected(True)
        self._default_pixel_size(self.labels_combo.currentText())

    def _picked(self, _name: str) -> None:
        self.state.picked = True

    def _default_pixel_size(self, name: str) -> None:
        """The Labels layer's scale when it is not 1 (then it is likely µm), else none."""
        if name not in self.viewer.layers:
            return
        scale = float(self.viewer.layers[name].scale[-1])
        self.pixel_spin.setValue(scale if scale != 1.0 else 0.0)

    def _labels_layer(self, name: str, what: str) -> Labels:
        if not name or name not in self.viewer.layers:
            raise BadInputError(f"No {what} layer: add a Labels layer with one id per object.")
        layer = self.viewer.layers[name]
        if not isinstance(layer, Labels):
            raise BadInputError(f"'{name}' is not a Labels layer.")
        return layer

    def chosen_images(self) -> list[Image]:
        """The image layers selected for intensities, in layer order."""
        names = {item.text() for item in self.images_list.selectedItems()}
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.name in names]

    # -- measuring ---------------------------------------------------------------------
    @when_idle
    def measure(self) -> None:
        """Measure the chosen Labels layer in a worker; the table becomes its features."""
        layer = self._labels_layer(self.labels_combo.currentText(), "cell")
        nuclei_name = self.nuclei_combo.currentText()
        nuclei = None
        if nuclei_name and nuclei_name != NONE:
            nuclei = np.array(self._labels_layer(nuclei_name, "nucleus").data, copy=True)
        planes, names = _channels(self.chosen_images())
        for plane, channel in zip(planes, names, strict=True):
            if tuple(plane.shape) != tuple(layer.data.shape):
                raise BadInputError(
                    f"The image '{channel}' {tuple(plane.shape)} does not cover the same "
                    f"pixels as '{layer.name}' {tuple(layer.data.shape)}."
                )
        labels = np.array(layer.data, copy=True)  # the user may keep painting
        if layer.metadata.get(SPARSE_KEY):  # id 1 of a sparse annotation is painted background
            labels[labels < FIRST_CELL_ID] = 0
        pixel_size = self.pixel_spin.value() or None
        name = layer.name

        def job() -> Generator[Progress, None, pd.DataFrame]:
            yield Progress(0, 1, f"Measuring '{name}'")
            image = np.stack([np.asarray(p) for p in planes], axis=-1) if planes else None
            table = measure_objects(
                labels,
                image,
                nuclei=nuclei,
                pixel_size=pixel_size,
                channel_names=names or None,
            )
            yield Progress(1, 1, f"Measured '{name}'")
            return table

        def done(table: pd.DataFrame) -> None:
            self._measured(name, table)

        self.runner.start(job, done, f"Measuring '{name}'")

    def _measured(self, name: str, table: pd.DataFrame) -> None:
        self.state.table, self.state.labels_name = table, name
        if name in self.viewer.layers:
            show_table(self.viewer.layers[name], table)
        self.save_button.setEnabled(True)
        self.status.setText(
            f"Measured {len(table)} object(s) in '{name}' ({len(table.columns)} columns); "
            "hover a cell to see its values, or Save table…"
        )

    def save_table(self, path: str | Path | None = None) -> Path | None:
        """Write the last table as .csv or .tsv (asks where when ``path`` is not given)."""
        return save_table_as(
            self,
            self.state.table,
            f"{self.state.labels_name}_measurements.csv",
            path,
            self.runner.report,
            self.status,
            "Nothing measured yet: press Measure first.",
        )


def _newest_result(labels: list[Labels]) -> str | None:
    """The newest Labels layer the plugin wrote (a prediction; not a training's live
    preview), if any: measured by default until the person picks a layer."""
    made = [ly.name for ly in labels if is_output(ly) and ly.metadata[OUTPUT_KEY] != PREVIEW_OUTPUT]
    return made[-1] if made else None


def _default_cells(labels: list[Labels]) -> str | None:
    """With no result: the first Labels layer that is not a sparse annotation, else the first."""
    plain = [ly.name for ly in labels if not ly.metadata.get(SPARSE_KEY)]
    return (plain[:1] or [ly.name for ly in labels][:1] or [None])[0]
