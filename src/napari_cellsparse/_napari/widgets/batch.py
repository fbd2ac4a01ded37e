"""The "Batch" dock widget: a trained model over a large layer or a whole folder.

Thin front end over :mod:`napari_cellsparse.scale.blockwise` and
:mod:`napari_cellsparse.scale.batch`:

* **Layer**: the chosen image layer is segmented block by block in a background worker
  (numpy, dask or zarr data alike); the result is a new Labels layer whose ``features`` are
  the per-cell measurements, which **Save table…** writes as CSV or TSV.
* **Folder**: every image of a folder (or of a DeepCell workspace) is segmented on Dask: a
  local cluster, or the scheduler whose address is given; finished images are skipped, failed
  ones listed. **Open results** adds the masks to the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import BadInputError
from ...scale.workspace import MASK_SUFFIXES, deepcell_items, folder_items
from ...training import BACKENDS, list_models
from ._dock import DockWidget, guarded
from ._fields import folder_row, model_row, refill_models
from ._layers import compact_labels, input_names, layer_data, refill_combo, show_layer
from ._tables import save_table_as, show_table

if TYPE_CHECKING:
    import napari

    from ...scale.batch import BatchSummary
    from ...scale.blockwise import BlockwiseResult

__all__ = ["BatchWidget"]

LOCAL = "local cluster"


@dataclass
class BatchState:
    """What the widget last made (owned by one widget)."""

    table: Any = None
    table_layer: str = ""
    summary: BatchSummary | None = None
    items: list[Any] = field(default_factory=list)
    project: Path | None = None  # where the last batch's QuPath project goes (None: not asked)
    opened: list[str] = field(default_factory=list)


class BatchWidget(DockWidget):
    """Dock widget: choose a model, then a layer or a folder; Run; results."""

    hint = "Choose a trained model, then a layer or a folder."

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, BatchState())
        self.refresh_models()

    def busy_buttons(self) -> list[QWidget]:
        return [self.run_layer_button, self.run_folder_button]

    # -- building ----------------------------------------------------------------------
    def _build(self) -> None:
        self.model_combo = QComboBox()
        models = model_row(self.model_combo, self.refresh_models)
        self.block_spin = QSpinBox()
        self.block_spin.setRange(128, 8192)
        self.block_spin.setSingleStep(256)
        self.block_spin.setValue(1024)
        self.block_spin.setSuffix(" px")
        self.block_spin.setToolTip("Pixels per block: memory grows with it, not with the image.")
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 1000.0)
        self.diameter_spin.setSpecialValueText("auto")
        self.diameter_spin.setSuffix(" px")
        self.diameter_spin.setToolTip("Cell diameter in pixels (auto: estimated per image).")
        common = QFormLayout()
        common.addRow("Model", models)
        common.addRow("Block size", self.block_spin)
        common.addRow("Cell diameter", self.diameter_spin)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._layer_tab(), "Layer")
        self.tabs.addTab(self._folder_tab(), "Folder")

        self.stop_button = self.cancel_button = QPushButton("Cancel")
        layout = QVBoxLayout(self)
        layout.addLayout(common)
        layout.addWidget(self.tabs)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.status)
        layout.addStretch()

    def _layer_tab(self) -> QWidget:
        tab = QWidget()
        self.image_combo = QComboBox()
        self.run_layer_button = QPushButton("Segment layer")
        self.run_layer_button.clicked.connect(self.run_layer)
        self.save_button = QPushButton("Save table…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_table())
        form = QFormLayout(tab)
        form.addRow("Image", self.image_combo)
        form.addRow(self.run_layer_button)
        form.addRow(self.save_button)
        return tab

    def _folder_tab(self) -> QWidget:
        tab = QWidget()
        self.input_edit = QLineEdit()
        self.input_edit.setPlaceholderText("folder of images, or the DeepCell workspace")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("results folder (folder layout)")
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(["folder", "deepcell"])
        self.layout_combo.setToolTip(
            "deepcell: OMETIFF/ in; SEGMASK/<name>_NucleusMask.tiff or _WholeCellMask.tiff "
            "and REPORTS/<name>_QUANT.tsv out."
        )
        self.compartment_combo = QComboBox()
        self.compartment_combo.addItems(["nucleus", "whole-cell"])
        self.mask_combo = QComboBox()
        self.mask_combo.addItems(list(MASK_SUFFIXES))
        self.mask_combo.setToolTip(
            "Folder layout: masks as tiled TIFF, zarr, or OME-Zarr labels with a pyramid "
            "(QuPath and napari-ome-zarr open those)."
        )
        self.project_check = QCheckBox("Write a QuPath project (Output/qupath)")
        self.project_check.setToolTip(
            "One entry per image with its objects: in QuPath open the project's import script "
            "(Automate > Project scripts), then Run > Run for project."
        )
        self.pattern_edit = QLineEdit("*")
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText(f"{LOCAL} (or tcp://host:8786, or none)")
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 64)
        self.workers_spin.setValue(2)
        self.workers_spin.setToolTip("Worker processes of the local cluster (one thread each).")
        self.run_folder_button = QPushButton("Run batch")
        self.run_folder_button.clicked.connect(self.run_folder)
        self.open_button = QPushButton("Open results")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(lambda: self.open_results())
        form = QFormLayout(tab)
        form.addRow("Input", folder_row(self.input_edit, tab, "Images"))
        form.addRow("Output", folder_row(self.output_edit, tab, "Results"))
        form.addRow("Layout", self.layout_combo)
        form.addRow("Model segments", self.compartment_combo)
        form.addRow("Masks as", self.mask_combo)
        form.addRow(self.project_check)
        form.addRow("Name filter", self.pattern_edit)
        form.addRow("Dask scheduler", self.scheduler_edit)
        form.addRow("Local workers", self.workers_spin)
        form.addRow(self.run_folder_button)
        form.addRow(self.open_button)
        return tab

    # -- models and layers -------------------------------------------------------------
    def refresh_models(self, select: str | None = None) -> None:
        """Fill the model list with the store's segmentation models."""
        refill_models(self.model_combo, BACKENDS, select)

    def _refresh_layers(self, _event: Any = None) -> None:
        refill_combo(self.image_combo, input_names(self.viewer.layers, Image))

    def _model_folder(self) -> str:
        name = self.model_combo.currentText()
        if not name:
            raise BadInputError("No trained model yet: train one in the Sparse training widget.")
        meta = next((m for m in list_models() if m["name"] == name), None)
        if meta is None:
            raise BadInputError(f"The model {name!r} is no longer in the model store.")
        return str(meta["path"])

    def _diameter(self) -> float | None:
        return self.diameter_spin.value() or None

    # -- a layer -----------------------------------------------------------------------
    @guarded
    def run_layer(self) -> None:
        """Segment the chosen image layer block-wise into a new Labels layer with features."""
        folder = self._model_folder()
        name = self.image_combo.currentText()
        if name not in self.viewer.layers:
            raise BadInputError("Choose an image layer to segment.")
        layer = self.viewer.layers[name]
        scale = tuple(layer.scale[-2:])
        kwargs = {
            "model": folder,
            "image": layer_data(layer),
            "rgb": bool(getattr(layer, "rgb", False)),
            "name": name,
            "block": self.block_spin.value(),
            "diameter": self._diameter(),
            "pixel_size": float(scale[-1]) if scale[-1] != 1.0 else None,
        }

        def done(answer: tuple[BlockwiseResult, Any]) -> None:
            self._show_layer_result(name, scale, *answer)

        self.runner.run_in_worker(
            "segment_layer", kwargs, done, f"Segmenting '{name}' block by block"
        )

    def _show_layer_result(
        self, name: str, scale: tuple, result: BlockwiseResult, table: Any
    ) -> None:
        labels_name = f"{name} labels"
        labels = compact_labels(result.labels, self.viewer)
        layer = show_layer(
            self.viewer, "labels", labels, labels_name, "block-wise segmentation", scale=scale
        )
        if table is not None and len(table):
            show_table(layer, table)
        else:
            layer.features = {}  # a layer shown again must not keep the last run's rows
        self.state.table, self.state.table_layer = table, labels_name
        self.save_button.setEnabled(table is not None)
        cut = (
            f"; {result.cut_objects} object(s) reached a block's halo" if result.cut_objects else ""
        )
        self.status.setText(
            f"{result.n_objects} objects in {result.blocks} block(s), {result.seconds:.1f} s"
            f"{cut}. Hover a cell for its measurements, or Save table…"
        )

    def save_table(self, path: str | Path | None = None) -> Path | None:
        """Write the last layer's measurements as .csv or .tsv (asks where without a path)."""
        return save_table_as(
            self,
            self.state.table,
            f"{self.state.table_layer}_measurements.csv",
            path,
            self.runner.report,
            self.status,
            "Nothing segmented yet: press Segment layer first.",
        )

    # -- a folder ----------------------------------------------------------------------
    def _items(self) -> list[Any]:
        source = self.input_edit.text().strip()
        if not source:
            raise BadInputError("Choose the folder of images (or the DeepCell workspace).")
        pattern = self.pattern_edit.text().strip() or "*"
        if self.layout_combo.currentText() == "deepcell":
            return deepcell_items(source, self.compartment_combo.currentText(), pattern)
        output = self.output_edit.text().strip()
        if not output:
            raise BadInputError("Choose a results folder.")
        return folder_items(source, output, pattern, self.mask_combo.currentText())

    @guarded
    def run_folder(self) -> None:
        """Segment every image of the folder on Dask; finished images are skipped."""
        from ...scale.batch import BatchOptions

        folder = self._model_folder()
        items = self._items()
        project = self._project_folder(items)
        text = self.scheduler_edit.text().strip()
        kwargs = {
            "items": items,
            "model": folder,
            "options": BatchOptions(block=self.block_spin.value(), diameter=self._diameter()),
            "scheduler": None if text in ("", LOCAL) else text,
            "workers": self.workers_spin.value(),
        }
        self.state.items, self.state.project = items, project
        self.runner.run_in_worker(
            "batch", kwargs, self._show_summary, f"Batch of {len(items)} image(s)"
        )

    def _project_folder(self, items: list[Any]) -> Path | None:
        """Where the QuPath project goes (checked before the batch starts), None if unasked:
        ``qupath`` beside the results."""
        from ...formats.qupath_project import check_project_folder

        if not self.project_check.isChecked() or not items:
            return None
        if self.layout_combo.currentText() == "deepcell":
            base = Path(self.input_edit.text().strip())
        else:
            base = Path(self.output_edit.text().strip())
        return check_project_folder(base / "qupath")

    def _show_summary(self, summary: BatchSummary) -> None:
        self.state.summary = summary
        project_line = self._write_project(summary)
        done, skipped, failed = (summary.of(s) for s in ("done", "skipped", "failed"))
        lines = [
            f"{len(done)} done, {len(skipped)} skipped (already done), {len(failed)} failed "
            f"in {summary.seconds:.1f} s on {summary.scheduler}."
        ]
        lines += [project_line] if project_line else []
        lines += [f"{Path(r.image).name}: {r.error}" for r in failed[:10]]
        self.status.setText("\n".join(lines))
        self.open_button.setEnabled(bool(done or skipped))
        if failed:
            show_info(f"{len(failed)} image(s) failed; the others are done. See the widget.")

    def _write_project(self, summary: BatchSummary) -> str:
        """Write the QuPath project if asked; the status line saying where (or why not)."""
        from ...formats.qupath_project import write_batch_project

        if self.state.project is None:
            return ""
        try:
            path, left_out = write_batch_project(self.state.project, self.state.items, summary)
        except BadInputError as err:
            return f"No QuPath project: {err}"
        if path is None:
            return "No QuPath project: no image has results."
        return f"QuPath project: {path} ({len(left_out)} image(s) left out)."

    def open_results(self, limit: int = 8) -> list[str]:
        """Add the masks of the last batch to the viewer (read lazily), at most ``limit``."""
        from ...formats.image_sources import image_stem, open_image

        if self.state.summary is None:
            return []
        opened = []
        for result in self.state.summary.results:
            if result.status == "failed" or not result.outputs or len(opened) >= limit:
                continue
            mask = Path(result.outputs[0])
            source = open_image(mask)
            name = image_stem(mask)
            show_layer(self.viewer, "labels", source.array, name, "folder run")
            opened.append(name)
        self.state.opened = opened
        return opened
