"""The "Sparse training" dock widget: train a model on a few painted cells, watch it learn, predict.

Thin front end over :func:`~napari_cellsparse.training.train_iter`: training runs in a
background worker with a progress bar, a live loss curve and, every few steps, the model's
prediction on the current view in a preview layer. Stop sets the training's cancel event, so
the model trained so far is still tuned and saved. Prediction (also in the worker) writes a
Labels layer drawn as outlines (contours: cheap to show for thousands of objects); annotation
layers are only ever read (copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ...core.devices import DEVICE_CHOICES
from ...core.errors import BackendUnavailableError, BadInputError, CellsparseError
from ...core.progress import Progress
from ...core.settings_text import parse_settings
from ...models.store import model_folder
from ...training import BACKENDS, backend_class, model_names
from ._dock import DockWidget
from ._fields import model_row
from ._layers import compact_labels, refill_combo, show_layer
from ._layers import layer_data as _layer_data
from .loss_plot import LossPlot

if TYPE_CHECKING:
    import napari

__all__ = ["SparseTrainingWidget"]

PREVIEW = "Training preview"
PREDICTION = "{} prediction"
WHERE_NEXT = "{} where to annotate next"
PLACES = "{} places to annotate"
TOP_PLACES = 10
BACKEND_EXTRAS = {"stardist": "stardist", "cellpose": "cellpose", "unet": "sam"}


@dataclass
class TrainingState:
    """What the widget knows between events (owned by one widget, never global)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (image, annotation) unique ids
    last: dict[str, Any] | None = None  # summary of the last training
    reset_next: bool = False
    stopping: bool = False  # Stop was pressed during the running job
    device: str = ""
    step: int = 0  # last training step seen (this session)
    cells: int = 0  # annotated cells the running training learns from
    preview_z: int | None = None  # stack slice the training preview shows


class SparseTrainingWidget(DockWidget):
    """Dock widget: pick image/annotation pairs and a backend; train, stop, reset, predict."""

    hint = "Paint a few cells (2, 3, ...) and some background (1), then Train."

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, TrainingState())
        self.stop_button.clicked.connect(self._say_stopping)
        self._refresh_models()

    def busy_buttons(self) -> list[QWidget]:
        return [
            self.train_button,
            self.reset_button,
            self.predict_button,
            self.where_button,
            self.export_button,
        ]

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.add_pair_button = QPushButton("Add pair")
        self.add_pair_button.clicked.connect(self.add_pair)
        self.remove_pair_button = QPushButton("Remove")
        self.remove_pair_button.clicked.connect(self.remove_pair)
        self.pairs_list = QListWidget()
        self.pairs_list.setMaximumHeight(70)
        self.pairs_list.setToolTip(
            "Image/annotation pairs to train on; when empty, the pair chosen above is used."
        )
        pair_row = QHBoxLayout()
        pair_row.addWidget(self.add_pair_button)
        pair_row.addWidget(self.remove_pair_button)

        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.name_edit = QLineEdit("sparse-model")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.backend_combo.currentTextChanged.connect(self._backend_steps)
        self._backend_steps(self.backend_combo.currentText())
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Annotation", self.labels_combo)
        form.addRow(pair_row)
        form.addRow(self.pairs_list)
        form.addRow("Backend", self.backend_combo)
        form.addRow("Model name", self.name_edit)
        form.addRow("Steps", self.steps_spin)

        self.patch_spin = self._default_spin(QSpinBox(), 2048, 16)
        self.batch_spin = self._default_spin(QSpinBox(), 256, 1)
        self.lr_spin = self._default_spin(QDoubleSpinBox(), 1.0, 1e-4, decimals=5)
        self.diameter_spin = self._default_spin(QDoubleSpinBox(), 1000.0, 1.0, decimals=1)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICE_CHOICES))
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 1_000_000)
        self.preview_spin.setValue(25)
        self.preview_spin.setSpecialValueText("off")
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("e.g. base_filters=8, depth=2")
        advanced = QFormLayout()
        advanced.addRow("Patch size", self.patch_spin)
        advanced.addRow("Batch size", self.batch_spin)
        advanced.addRow("Learning rate", self.lr_spin)
        advanced.addRow("Target diameter", self.diameter_spin)
        advanced.addRow("Device", self.device_combo)
        advanced.addRow("Preview every", self.preview_spin)
        advanced.addRow("Backend settings", self.settings_edit)
        inner = QWidget()
        inner.setLayout(advanced)
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(inner)

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the model so far is saved.")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("The next training starts from scratch.")
        self.reset_button.clicked.connect(self.reset)
        run_row = QHBoxLayout()
        for button in (self.train_button, self.stop_button, self.reset_button):
            run_row.addWidget(button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.loss_plot = LossPlot()

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("A trained model from the model store")
        models = model_row(self.model_combo, self._refresh_models)
        self.predict_image_combo = QComboBox()
        self.predict_diameter_spin = QDoubleSpinBox()
        self.predict_diameter_spin.setRange(0.0, 10_000.0)
        self.predict_diameter_spin.setDecimals(1)
        self.predict_diameter_spin.setSpecialValueText("auto")
        self.predict_diameter_spin.setToolTip("Cell diameter in pixels; auto estimates it.")
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 1_000_000)
        self.min_area_spin.setSpecialValueText("off")
        self.min_area_spin.setToolTip("Objects smaller than this many pixels are dropped.")
        predict_form = QFormLayout()
        predict_form.addRow("Model", models)
        predict_form.addRow("Predict on", self.predict_image_combo)
        predict_form.addRow("Diameter", self.predict_diameter_spin)
        predict_form.addRow("Min area", self.min_area_spin)
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.predict)
        self.where_button = QPushButton("Where to annotate next")
        self.where_button.setToolTip(
            "Where the model is least sure: 8 predictions under flips and turns compared; "
            "the top 10 places are numbered."
        )
        self.where_button.clicked.connect(self.where_next)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip(
            "Write the model as a bioimage.io package (.zip) for deepImageJ, ilastik, QuPath."
        )
        self.export_button.clicked.connect(lambda: self.export())
        predict_row = QHBoxLayout()
        predict_row.addWidget(self.predict_button)
        predict_row.addWidget(self.where_button)
        predict_row.addWidget(self.export_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(run_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.loss_plot)
        layout.addLayout(predict_form)
        layout.addLayout(predict_row)
        layout.addWidget(self.status)
        layout.addStretch()

    def _backend_steps(self, backend: str) -> None:
        """Show the chosen backend's default step count (about 3 minutes on a laptop CPU)."""
        from ...core.errors import CellsparseError
        from ...training.backend import backend_class

        try:
            self.steps_spin.setValue(backend_class(backend).config_class().steps)
        except (CellsparseError, ImportError):  # an unavailable backend keeps the value
            return

    @staticmethod
    def _default_spin(spin: Any, top: float, step: float, decimals: int | None = None) -> Any:
        """A spin box whose lowest value (0) means "the backend's default"."""
        if decimals is not None:
            spin.setDecimals(decimals)
        spin.setRange(0, top)
        spin.setSingleStep(step)
        spin.setSpecialValueText("default")
        spin.setValue(0)
        return spin

    # -- layers ------------------------------------------------------------------------
    def _layer_by_uid(self, uid: str) -> Any:
        # napari hands plugins a proxy viewer whose layers are new wrapper objects on every
        # access, so layers are identified by their stable unique id, not by ``id()``.
        for layer in self.viewer.layers:
            if layer.unique_id == uid:
                return layer
        return None

    def _refresh_layers(self, _event: Any = None) -> None:
        images = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]
        labels = [
            ly.name for ly in self.viewer.layers if isinstance(ly, Labels) and ly.name != PREVIEW
        ]
        preferred = [n for n in labels if "annotation" in n.lower()]
        for combo, names, best in (
            (self.image_combo, images, images[:1]),
            (self.labels_combo, labels, preferred[:1] or labels[:1]),
            (self.predict_image_combo, images, images[:1]),
        ):
            refill_combo(combo, names, best[0] if best else None)
        uids = {ly.unique_id for ly in self.viewer.layers}
        self.state.pairs = [p for p in self.state.pairs if p[0] in uids and p[1] in uids]
        self._show_pairs()

    def _show_pairs(self) -> None:
        self.pairs_list.clear()
        for image_uid, labels_uid in self.state.pairs:
            image, labels = self._layer_by_uid(image_uid), self._layer_by_uid(labels_uid)
            if image is not None and labels is not None:
                self.pairs_list.addItem(f"{image.name}  ←  {labels.name}")

    def _chosen_pair(self) -> tuple[Image, Labels]:
        """The image and annotation layers chosen in the combo boxes (checked)."""
        image_name, labels_name = self.image_combo.currentText(), self.labels_combo.currentText()
        if not image_name or image_name not in self.viewer.layers:
            raise BadInputError("No image layer: open an image first (File > Open Sample).")
        if not labels_name or labels_name not in self.viewer.layers:
            raise BadInputError(
                "No annotation layer: add a Labels layer and paint some cells (2, 3, ...) and "
                "background (1); 0 means not annotated."
            )
        image, labels = self.viewer.layers[image_name], self.viewer.layers[labels_name]
        self._check_pair(image, labels)
        return image, labels

    def _check_pair(self, image: Image, labels: Labels) -> None:
        ishape, lshape = tuple(_layer_data(image).shape), tuple(labels.data.shape)
        if len(lshape) not in (2, 3):
            raise BadInputError(
                f"The annotation '{labels.name}' has shape {lshape}; it must be 2D (YX) or a "
                "stack (ZYX)."
            )
        fits = ishape == lshape or (
            len(ishape) == len(lshape) + 1 and lshape in (ishape[:-1], ishape[1:])
        )
        if not fits:
            raise BadInputError(
                f"The annotation '{labels.name}' {lshape} does not match the image "
                f"'{image.name}' {ishape}; they must cover the same pixels."
            )

    def add_pair(self) -> None:
        """Add the image/annotation chosen above to the training pairs."""
        try:
            image, labels = self._chosen_pair()
        except CellsparseError as err:
            self.runner.report(err)
            return
        pair = (image.unique_id, labels.unique_id)
        if pair not in self.state.pairs:
            self.state.pairs.append(pair)
        self._show_pairs()
        self.status.setText(f"{len(self.state.pairs)} pair(s) to train on.")

    def remove_pair(self) -> None:
        """Remove the selected pair (the last one when none is selected)."""
        if not self.state.pairs:
            return
        row = self.pairs_list.currentRow()
        del self.state.pairs[row if 0 <= row < len(self.state.pairs) else -1]
        self._show_pairs()
        self.status.setText(f"{len(self.state.pairs)} pair(s) to train on.")

    def training_layers(self) -> list[tuple[Image, Labels]]:
        """The pairs to train on: the list, or the chosen pair when the list is empty."""
        if not self.state.pairs:
            return [self._chosen_pair()]
        pairs = []
        for image_uid, labels_uid in self.state.pairs:
            image, labels = self._layer_by_uid(image_uid), self._layer_by_uid(labels_uid)
            if image is None or labels is None:
                raise BadInputError("A layer of a training pair was removed; remove that pair.")
            self._check_pair(image, labels)
            pairs.append((image, labels))
        return pairs

    def _current_slice(self, image: Image, labels: Labels) -> tuple[np.ndarray, int | None]:
        """The first pair's image in the current view as YX or YXC, and its z (stacks)."""
        data = _layer_data(image)
        z = None
        if labels.data.ndim == 3:
            world = labels.world_to_data(self.viewer.dims.point)
            z = int(np.clip(round(float(world[0])), 0, labels.data.shape[0] - 1))
            data = data[:, z] if data.shape[1:] == labels.data.shape else data[z]
        data = np.asarray(data)
        if data.ndim == 3 and data.shape[-1] > 4 >= data.shape[0]:
            data = np.moveaxis(data, 0, -1)  # CYX → YXC
        return data, z

    # -- training ----------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        settings = parse_settings(self.settings_edit.text())
        for key, spin, kind in (
            ("patch_size", self.patch_spin, int),
            ("batch_size", self.batch_spin, int),
            ("learning_rate", self.lr_spin, float),
            ("target_diameter", self.diameter_spin, float),
        ):
            if spin.value() > 0:
                settings[key] = kind(spin.value())
        return settings

    def _backend(self) -> str:
        """The chosen backend, checked to be installed (a clear message when it is not)."""
        backend = self.backend_combo.currentText()
        try:
            backend_class(backend)
        except CellsparseError:
            raise
        except ImportError as err:
            raise BackendUnavailableError(
                f"The {backend} backend", BACKEND_EXTRAS.get(backend, "all"), err
            ) from err
        return backend

    def train(self) -> None:
        """Train (or continue training) the named model on the pairs, in a worker."""
        if self.runner.busy:
            self.status.setText("Still working; press Stop or wait.")
            return
        try:
            backend = self._backend()
            name = self.name_edit.text().strip()
            model_folder(name)
            settings = self._settings()
            layers = self.training_layers()
            images = [_layer_data(img) for img, _ in layers]
            # Copies: the user may keep painting while the worker trains.
            annotations = [np.array(lab.data, copy=True) for _, lab in layers]
            if not any((a > 1).any() for a in annotations):
                raise BadInputError(
                    "The annotation is empty: paint some cells (labels 2, 3, ...) and some "
                    "background (label 1) first."
                )
            preview, z = self._current_slice(*layers[0])
        except CellsparseError as err:
            self.runner.report(err)
            return
        steps, every = self.steps_spin.value(), self.preview_spin.value()
        device, reset = self.device_combo.currentText(), self.state.reset_next
        self.state.step, self.state.preview_z, self.state.cells = 0, z, 0
        self.state.stopping = False
        self.loss_plot.clear()
        self.progress_bar.setRange(0, steps)
        self.progress_bar.setValue(0)
        preview_layer = layers[0][0]
        if every:  # made now, in answer to the click, rather than mid-training
            self._show_preview(np.zeros(preview.shape[:2], np.uint8), preview_layer)
        kwargs = {
            "backend": backend,
            "images": [np.asarray(img) for img in images],
            "labels": annotations,
            "name": name,
            "steps": steps,
            "reset": reset,
            "device": device,
            "preview": preview,
            "preview_every": every,
            "settings": settings,
            "live": True,
        }

        def done(summary: dict[str, Any]) -> None:
            self._trained(summary, reset)

        self.watch([lab for _, lab in layers])
        self.runner.run_in_worker(
            "train",
            kwargs,
            done,
            f"Training {backend} '{name}'",
            on_progress=lambda event: self._on_progress(event, preview_layer),
            updates=self._changed_annotation,
        )

    def _changed_annotation(self) -> list[np.ndarray] | None:
        """The training's annotations when they changed since the last pull (relay thread;
        a copy, so painting goes on undisturbed)."""
        if not self.take_change():
            return None
        return [np.array(layer.data, copy=True) for layer in self._watched]

    def _on_progress(self, event: Progress, image: Image) -> None:
        """Training progress on the main thread: device, loss curve, bar and preview."""
        info = event.info
        if "device" in info:
            self.state.device = str(info["device"])
        loss = info.get("loss")
        if loss is None:
            if event.message:
                self.status.setText(f"{event.message} ({self.state.device})")
            return
        self.state.step = event.step
        self.loss_plot.add(event.step, float(loss))
        self.progress_bar.setMaximum(max(event.total, 1))
        self.progress_bar.setValue(event.step)
        annotation = info.get("annotation")
        if annotation:
            self.state.cells = int(annotation.get("cells", 0))
        text = f"{event.message} on {self.state.device}, loss {float(loss):.4f}"
        if self.state.cells:
            text += f", {self.state.cells} annotated cell(s)"
        if info.get("annotation_error"):
            text += f" (new annotation not used: {info['annotation_error']})"
        if self.state.stopping:
            text += " (stopping: the model so far will be saved)"
        self.status.setText(text)
        if info.get("preview") is not None:
            try:
                self._show_preview(np.asarray(info["preview"]), image)
            except Exception as err:  # a live preview: say it in the status, no pop-up
                self.status.setText(f"{text} (preview not shown: {err})")

    def _show_preview(self, labels: np.ndarray, image: Image) -> None:
        nd = labels.ndim
        show_layer(
            self.viewer,
            "labels",
            compact_labels(labels, self.viewer),
            PREVIEW,
            opacity=0.5,
            scale=image.scale[-nd:],
            translate=image.translate[-nd:],
        )

    def stop(self) -> None:
        """Stop training after the current step (the model so far is saved); a second Stop
        ends the worker at once (the last saved version stays)."""
        self.runner.cancel()
        self._say_stopping()

    def _say_stopping(self) -> None:
        if not self.runner.busy:
            return
        if self.state.stopping:
            self.status.setText("Ending the model worker; the last saved model is kept...")
            return
        self.state.stopping = True
        self.status.setText(
            f"Stopping after step {self.state.step}; the model so far will be saved..."
        )

    def reset(self) -> None:
        """Make the next training start afresh (the model's saved weights get replaced)."""
        self.state.reset_next = True
        self.loss_plot.clear()
        self.progress_bar.setValue(0)
        self.status.setText(
            f"Reset: the next Train starts '{self.name_edit.text().strip()}' from scratch "
            "(random weights); its saved weights will be replaced."
        )

    def _trained(self, summary: dict[str, Any], reset: bool) -> None:
        if reset:
            self.state.reset_next = False
        self.state.last = summary
        name, info = summary["name"], summary["info"]
        self._refresh_models(select=name)
        sessions = info.get("sessions") or [{}]
        done = int(sessions[-1].get("steps", self.state.step))
        device = info.get("device", summary["device"])
        total = info.get("steps", done)
        if info.get("stopped_early"):
            head = f"Stopped after {done} step(s); saved '{name}'"
        else:
            head = f"Trained '{name}' for {done} step(s)"
        self.status.setText(
            f"{head} ({summary['backend']} on {device}; {total} step(s) in all). Press Predict."
        )

    # -- prediction ----------------------------------------------------------------------
    def _refresh_models(self, select: str | None = None) -> None:
        """Fill the model list with the store's segmentation models (no counters)."""
        refill_combo(self.model_combo, model_names(BACKENDS), select=select)

    def _prediction_inputs(self) -> tuple[str, str, Image] | None:
        """The chosen model, image name and image layer; None (reported) when missing."""
        if self.runner.busy:
            self.status.setText("Still working; press Stop or wait.")
            return None
        name = self.model_combo.currentText()
        image_name = self.predict_image_combo.currentText()
        if not image_name or image_name not in self.viewer.layers:
            self.runner.report(BadInputError("No image layer to predict on: open an image first."))
            return None
        if not name:
            self.runner.report(BadInputError("No trained model yet: press Train first."))
            return None
        self.state.stopping = False
        return name, image_name, self.viewer.layers[image_name]

    def predict(self) -> None:
        """Predict the chosen image with the chosen model (a Labels layer of outlines)."""
        chosen = self._prediction_inputs()
        if chosen is None:
            return
        name, image_name, image = chosen
        kwargs = {
            "name": name,
            "device": self.device_combo.currentText(),
            "image": np.asarray(_layer_data(image)),
            "rgb": bool(image.rgb),
            "diameter": self.predict_diameter_spin.value() or None,
            "min_area": self.min_area_spin.value(),
        }

        def done(result: dict[str, Any]) -> None:
            self._predicted(image_name, image, name, result)

        self.runner.run_in_worker("predict", kwargs, done, f"Predicting {image_name}")

    def where_next(self) -> None:
        """Show where the chosen model is least sure on the chosen 2D image: a map and the
        top places, numbered; the chosen annotation's painted pixels are left out."""
        chosen = self._prediction_inputs()
        if chosen is None:
            return
        name, image_name, image = chosen
        data = np.asarray(_layer_data(image))
        labels_name = self.labels_combo.currentText()
        painted = image_name == self.image_combo.currentText() and labels_name in self.viewer.layers
        labels = self.viewer.layers[labels_name].data if painted else None
        known = labels if labels is not None and labels.shape == data.shape[:2] else None
        kwargs = {
            "name": name,
            "device": self.device_combo.currentText(),
            "image": data,
            "rgb": bool(image.rgb),
            "diameter": self.predict_diameter_spin.value() or None,
            "annotation": np.asarray(known) if known is not None else None,
        }

        def done(result: Any) -> None:
            self._show_where_next(image_name, image, result)

        self.runner.run_in_worker("where_next", kwargs, done, f"Comparing 8 views of {image_name}")

    def _show_where_next(self, image_name: str, image: Image, result: Any) -> None:
        """The disagreement map (magma, added on top) and its top places, numbered."""
        where = {"scale": image.scale[-2:], "translate": image.translate[-2:]}
        show_layer(
            self.viewer,
            "image",
            result.map,
            WHERE_NEXT.format(image_name),
            colormap="magma",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            **where,
        )
        top = result.places[:TOP_PLACES]
        show_layer(
            self.viewer,
            "points",
            np.array([[p.y, p.x] for p in top], float).reshape(-1, 2),
            PLACES.format(image_name),
            features={"rank": np.arange(1, len(top) + 1)},
            text={"string": "{rank}", "color": "cyan", "anchor": "upper_left"},
            face_color="transparent",
            border_color="cyan",
            size=12,
            **where,
        )
        self.status.setText(
            f"{len(result.places)} place(s) where the model is unsure in '{image_name}'; the "
            f"top {len(top)} are numbered. Annotate there and train again."
        )

    def export(self, path: str | None = None) -> None:
        """Export the chosen model as a bioimage.io package (asks where unless ``path``).

        The test input is the chosen 2D grayscale image when there is one (at its diameter
        setting), otherwise synthetic cells at the model's scale."""
        if self.runner.busy:
            self.status.setText("Still working; press Stop or wait.")
            return
        name = self.model_combo.currentText()
        if not name:
            self.runner.report(BadInputError("No trained model yet: press Train first."))
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export to bioimage.io", f"{name}.zip", "bioimage.io packages (*.zip)"
            )
            if not path:
                return
        image_name = self.predict_image_combo.currentText()
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None  # noqa: SIM401 (a LayerList has no get)
        data = np.asarray(_layer_data(image)) if image is not None else None
        kwargs = {
            "name": name,
            "out": str(path),
            "image": data if data is not None and data.ndim == 2 else None,
            "diameter": self.predict_diameter_spin.value() or None,
        }

        def done(written: str) -> None:
            self.status.setText(f"Exported '{name}' to {written} (bioimage.io model package).")

        self.runner.run_in_worker("export_bioimageio", kwargs, done, f"Exporting {name}")

    def _predicted(self, image_name: str, image: Image, model: str, result: dict[str, Any]) -> None:
        """Show a prediction as one Labels layer drawn as outlines (contours): for hundreds
        of objects a Shapes layer of polygons stalled the viewer for a third of a second; a
        small integer type is drawn faster still. Fill it from napari's layer controls. The
        training preview, when there is one, becomes the prediction layer."""
        labels = compact_labels(result["labels"], self.viewer)
        nd = labels.ndim
        name = PREDICTION.format(image_name)
        layers = self.viewer.layers
        if name not in layers and PREVIEW in layers and isinstance(layers[PREVIEW], Labels):
            # The prediction supersedes the training preview: it takes over that layer
            # rather than lying on top of it (and napari builds no new layer: ~0.17 s).
            layers[PREVIEW].name = name
        layer = show_layer(
            self.viewer,
            "labels",
            labels,
            name,
            scale=image.scale[-nd:],
            translate=image.translate[-nd:],
            opacity=0.7,
        )
        layer.contour = 1
        n = int(result["objects"])
        diameters = result["diameters"]
        shown = f", diameter {np.median(diameters):.1f} px" if diameters else ""
        self.status.setText(
            f"Predicted {n} object(s) in '{image_name}' with '{model}' "
            f"({result['backend']} on {result['device']}{shown})."
        )
