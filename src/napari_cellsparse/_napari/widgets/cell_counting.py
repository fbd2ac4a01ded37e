"""The "Cell counting" dock widget: click rough centres of some cells, train, count.

Thin front end over :mod:`napari_cellsparse.counting`: training, counting, "where to click
next" (:mod:`._counting_where`) and folder batches run in a background worker (progress bar,
Stop/Cancel). A count adds the density as an Image
layer and the detected centres as a Points layer; the count is shown here and stored in both
layers' ``metadata["count"]``. Layers the user drew are only ever read (copied).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import BadInputError, CellsparseError
from ...core.progress import Progress
from ...core.settings_text import parse_settings
from ...counting import BACKEND, BatchResult, CounterConfig, CountResult
from ...models.store import model_folder
from ._counting_where import ClickPanel
from ._devices import DeviceCombo
from ._dock import DockWidget, when_idle
from ._fields import NONE, folder_row, model_row, refill_models, training_controls
from ._layers import image_2d, input_names, mask_of, points_yx, refill_combo, show_layer

if TYPE_CHECKING:
    import napari

__all__ = ["CellCountingWidget"]

DENSITY = "{} density"
CENTRES = "{} centres"


@dataclass
class CountingState:
    """What the widget knows between events (owned by one widget, never global)."""

    last: dict[str, Any] | None = None  # summary of the last training
    reset_next: bool = False
    stopping: bool = False  # Stop was pressed during the running job
    last_count: float | None = None


class CellCountingWidget(ClickPanel, DockWidget):
    """Dock widget: points (+ background, complete regions) → train → count an image or a folder."""

    hint = "Click the centres of some cells in a Points layer, then Train."

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, CountingState())
        self.stop_button.clicked.connect(self._say_stopping)
        self._refresh_models()

    def busy_buttons(self) -> list[QWidget]:
        buttons = (self.train_button, self.reset_button, self.count_button, self.click_button)
        return [*buttons, self.batch_button]

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.points_combo = QComboBox()
        self.background_combo = QComboBox()
        self.background_combo.setToolTip(
            "Painted background (Labels: 1 in a sparse annotation, else any label; or Shapes)."
        )
        self.regions_combo = QComboBox()
        self.regions_combo.setToolTip("Regions where every cell has a point (Shapes or Labels).")
        self.name_edit = QLineEdit("counter")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(CounterConfig().steps)
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 1000.0)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSpecialValueText("auto")
        self.diameter_spin.setToolTip("Typical cell diameter in pixels; auto estimates it.")
        self.device_combo = DeviceCombo()
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("e.g. patch_size=96, encoder_depth=3")
        self.settings_edit.setToolTip("Other counter settings (CounterConfig fields).")
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Centres (points)", self.points_combo)
        form.addRow("Background", self.background_combo)
        form.addRow("Complete regions", self.regions_combo)
        form.addRow("Counter name", self.name_edit)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Cell diameter", self.diameter_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Settings", self.settings_edit)

        controls = training_controls(
            self, "Stop after the current step (training: the counter so far is saved)."
        )

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("A trained counter from the model store")
        models = model_row(self.model_combo, self._refresh_models)
        self.count_image_combo = QComboBox()
        self.count_button = QPushButton("Count")
        self.count_button.clicked.connect(self.count)
        self.count_label = QLabel("Count: –")
        self.count_label.setStyleSheet("font-size: 15px; font-weight: bold")
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of images")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder (default: <folder>/counts)")
        self.batch_button = QPushButton("Count folder")
        self.batch_button.setToolTip("counts.json, counts.csv and one overlay PNG per image")
        self.batch_button.clicked.connect(self.count_folder)
        count_form = QFormLayout()
        count_form.addRow("Counter", models)
        count_form.addRow("Count on", self.count_image_combo)
        count_form.addRow(self.count_button)
        count_form.addRow(self.count_label)
        count_form.addRow(self._build_click())
        count_form.addRow("Folder", folder_row(self.folder_edit, self, "Folder of images to count"))
        count_form.addRow("Output", self.out_edit)
        count_form.addRow(self.batch_button)
        self.follow_choice(self.image_combo, self.count_image_combo)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(controls)
        layout.addLayout(count_form)
        layout.addWidget(self.status)
        layout.addStretch()

    # -- layers ------------------------------------------------------------------------
    def _refresh_layers(self, _event: Any = None) -> None:
        layers = list(self.viewer.layers)
        images, points = input_names(layers, Image), input_names(layers, Points)
        masks = [NONE] + [ly.name for ly in layers if isinstance(ly, (Labels, Shapes))]
        for combo, names in (
            (self.image_combo, images),
            (self.points_combo, points),
            (self.background_combo, masks),
            (self.regions_combo, masks),
            (self.count_image_combo, images),
        ):
            refill_combo(combo, names)

    def _refresh_models(self, select: str | None = None) -> None:
        refill_models(self.model_combo, {BACKEND}, select)

    def _layer(self, combo: QComboBox, what: str) -> Any:
        name = combo.currentText()
        if not name or name == NONE or name not in self.viewer.layers:
            raise BadInputError(f"Choose {what} first.")
        return self.viewer.layers[name]

    def training_inputs(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Copies of the chosen image, points (y, x), background and complete-region masks."""
        image_layer = self._layer(self.image_combo, "an image layer")
        image = image_2d(image_layer)
        points = points_yx(
            self._layer(self.points_combo, "a Points layer of cell centres"), image_layer
        )
        if not len(points):
            raise BadInputError("The Points layer is empty: click the centres of some cells.")
        masks = []
        for combo in (self.background_combo, self.regions_combo):
            chosen = combo.currentText()
            masks.append(
                None
                if chosen in ("", NONE)
                else mask_of(self.viewer.layers[chosen], image.shape[:2])
            )
        return image, points, masks[0], masks[1]

    # -- training ----------------------------------------------------------------------
    @when_idle
    def train(self) -> None:
        """Train (or continue training) the named counter, in a worker."""
        name = self.name_edit.text().strip()
        model_folder(name)
        image, points, background, regions = self.training_inputs()
        settings = parse_settings(self.settings_edit.text())
        steps, device, reset = (
            self.steps_spin.value(),
            self.device_combo.currentText(),
            self.state.reset_next,
        )
        if self.diameter_spin.value():
            settings["diameter"] = self.diameter_spin.value()
        self.state.stopping = False
        self.progress_bar.setRange(0, steps)
        self.progress_bar.setValue(0)
        kwargs = {
            "image": image,
            "points": points,
            "name": name,
            "background": background,
            "regions": regions,
            "steps": steps,
            "reset": reset,
            "device": device,
            "settings": settings,
            "live": True,
        }
        combos = (self.points_combo, self.background_combo, self.regions_combo)
        names = [c.currentText() for c in combos]
        self.watch([self.viewer.layers[n] for n in names if n in self.viewer.layers])
        self.runner.run_in_worker(
            "train_counter",
            kwargs,
            self._trained,
            f"Training counter '{name}'",
            on_progress=self._on_progress,
            updates=self._changed_inputs,
        )

    def _changed_inputs(self) -> dict[str, Any] | None:
        """The points and masks when they changed since the last pull (relay thread)."""
        if not self.take_change():
            return None
        try:
            _image, points, background, regions = self.training_inputs()
        except CellsparseError:
            return None  # e.g. every point deleted for now: train on what it had
        return {"points": [points], "background": [background], "regions": [regions]}

    def _on_progress(self, event: Progress) -> None:
        if event.total:
            self.progress_bar.setMaximum(event.total)
            self.progress_bar.setValue(min(event.step, event.total))
        loss = event.info.get("loss")
        text = event.message + (f", loss {loss:.4f}" if loss is not None else "")
        annotation = event.info.get("annotation")
        if annotation:
            text += f", {annotation.get('cells', 0)} point(s)"
        if self.state.stopping:
            text += " (stopping)"
        self.status.setText(text)

    def _trained(self, summary: dict[str, Any]) -> None:
        self.state.reset_next = False
        self.state.last = summary
        name, info = summary["name"], summary["info"]
        self._refresh_models(select=name)
        session = info["sessions"][-1]
        head = "Stopped after" if info.get("stopped_early") else "Trained for"
        self.status.setText(
            f"{head} {session['steps']} step(s): counter '{name}' on {summary['device']} "
            f"(training cells about {summary['train_diameter']:.1f} px wide). Press Count."
        )

    def _say_stopping(self) -> None:
        """Stop was pressed (the runner forwards it): the running job stops after its
        current step; a second Stop ends the worker at once."""
        if self.runner.busy:
            self.state.stopping = True

    def reset(self) -> None:
        """Make the next training start afresh."""
        self.state.reset_next = True
        self.status.setText(
            f"Reset: the next Train starts '{self.name_edit.text().strip()}' from scratch."
        )

    # -- counting ----------------------------------------------------------------------
    def _counter_name(self) -> str:
        name = self.model_combo.currentText()
        if not name:
            raise BadInputError("No trained counter yet: press Train first.")
        return name

    @when_idle
    def count(self) -> None:
        """Count the chosen image: density and centres layers, the count in the widget."""
        name = self._counter_name()
        layer = self._layer(self.count_image_combo, "an image to count")
        image = image_2d(layer)
        kwargs = {"name": name, "device": self.device_combo.currentText(), "image": image}
        self.runner.run_in_worker(
            "count",
            kwargs,
            lambda result: self._show(layer, name, result),
            f"Counting {layer.name}",
        )

    def _show(self, layer: Image, counter: str, result: CountResult) -> None:
        meta = {"count": result.count, "n_centres": len(result.centres), "counter": counter}
        made_by = f"count of '{counter}'"
        nd_scale, nd_translate = layer.scale[-2:], layer.translate[-2:]
        density_name, centres_name = DENSITY.format(layer.name), CENTRES.format(layer.name)
        show_layer(
            self.viewer,
            "image",
            result.density,
            density_name,
            made_by,
            colormap="inferno",
            blending="additive",
            opacity=0.7,
            scale=nd_scale,
            translate=nd_translate,
            metadata=dict(meta),
        )
        show_layer(
            self.viewer,
            "points",
            result.centres,
            centres_name,
            made_by,
            size=max(3.0, result.diameter / 2),
            face_color="red",
            border_color="white",
            scale=nd_scale,
            translate=nd_translate,
            metadata=dict(meta),
        )
        self.state.last_count = result.count
        self.count_label.setText(f"Count: {result.count:.1f}  ({len(result.centres)} centres)")
        doubt = f" {result.doubt}" if result.doubt else ""
        self.status.setText(f"Counted '{layer.name}' with '{counter}'.{doubt}")

    @when_idle
    def count_folder(self) -> None:
        """Count every image of the chosen folder; write counts.json, counts.csv and PNGs."""
        name = self._counter_name()
        folder = Path(self.folder_edit.text().strip()).expanduser()
        if not self.folder_edit.text().strip() or not folder.is_dir():
            raise BadInputError("Choose a folder of images to count.")
        out = Path(self.out_edit.text().strip() or folder / "counts").expanduser()
        self.state.stopping = False
        kwargs = {
            "name": name,
            "device": self.device_combo.currentText(),
            "folder": str(folder),
            "out": str(out),
        }
        self.runner.run_in_worker(
            "count_folder",
            kwargs,
            lambda result: self._batch_done(result, out),
            f"Counting {folder.name}",
            on_progress=self._on_progress,
        )

    def _batch_done(self, result: BatchResult, out: Path) -> None:
        total = sum(result.counts.values())
        text = f"Counted {len(result.counts)} image(s) ({total:.1f} cells); wrote {out}."
        if result.cancelled:
            text = "Cancelled: " + text
        if result.errors:
            skipped = "; ".join(f"{Path(p).name}: {m}" for p, m in result.errors.items())
            show_warning(f"{len(result.errors)} file(s) skipped: {skipped}")
            text += f" Skipped {len(result.errors)} file(s)."
        if result.doubts:
            names = ", ".join(Path(p).name for p in result.doubts)
            text += (
                f" {len(result.doubts)} count(s) mostly without centres ({names}): check their "
                "overlays; counts.csv says why."
            )
        self.status.setText(text)
