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
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ...core.errors import BackendUnavailableError, BadInputError, CellsparseError
from ...core.progress import Progress
from ...core.settings_text import parse_settings
from ...models.store import model_folder
from ...training import BACKENDS, backend_class, list_models
from ._devices import DeviceCombo
from ._dock import DockWidget, when_idle
from ._fields import training_controls
from ._layers import (
    PREVIEW_OUTPUT,
    annotation_choice,
    compact_labels,
    input_names,
    layer_data,
    refill_combo,
    show_layer,
)
from ._training_pairs import TrainingPairs
from ._training_predict import PREVIEW, PredictionPanel
from .loss_plot import LossPlot

if TYPE_CHECKING:
    import napari

__all__ = ["SparseTrainingWidget"]

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


class SparseTrainingWidget(TrainingPairs, PredictionPanel, DockWidget):
    """Dock widget: pick image/annotation pairs and a backend; train, stop, reset, predict
    (the pairs in :mod:`._training_pairs`, the prediction side in :mod:`._training_predict`)."""

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
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.name_edit = QLineEdit("sparse-model")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.backend_combo.currentTextChanged.connect(self._backend_steps)
        self.backend_combo.textActivated.connect(self._load_backend)
        self._backend_steps(self.backend_combo.currentText())
        form = QFormLayout()
        self._build_pairs(form)
        form.addRow("Backend", self.backend_combo)
        form.addRow("Model name", self.name_edit)
        form.addRow("Steps", self.steps_spin)

        self.patch_spin = self._default_spin(QSpinBox(), 2048, 16)
        self.batch_spin = self._default_spin(QSpinBox(), 256, 1)
        self.lr_spin = self._default_spin(QDoubleSpinBox(), 1.0, 1e-4, decimals=5)
        self.diameter_spin = self._default_spin(QDoubleSpinBox(), 1000.0, 1.0, decimals=1)
        self.device_combo = DeviceCombo()
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

        controls = training_controls(
            self, "Stop after the current step; the model so far is saved."
        )
        self.loss_plot = LossPlot()

        predict_form, predict_row = self._build_prediction()
        self.model_combo.textActivated.connect(self._load_model_backend)
        self.follow_choice(self.image_combo, self.predict_image_combo)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(controls)
        layout.addWidget(self.loss_plot)
        layout.addLayout(predict_form)
        layout.addLayout(predict_row)
        layout.addWidget(self.status)
        layout.addStretch()

    def _backend_steps(self, backend: str) -> None:
        """Show the chosen backend's default step count (about a minute on a laptop CPU)."""
        try:
            self.steps_spin.setValue(backend_class(backend).config_class().steps)
        except (CellsparseError, ImportError):  # an unavailable backend keeps the value
            return

    def _load_backend(self, backend: str) -> None:
        """The person chose ``backend``: the worker loads its libraries now, while they
        annotate (TensorFlow takes 5-8 s), so that Train does not wait for them."""
        try:
            cls = backend_class(backend)
        except (CellsparseError, ImportError):  # Train will say what is missing
            return
        self.runner.warm_in_worker("prepare", {"backend": backend}, f"Loading {cls.title}")

    def _load_model_backend(self, name: str) -> None:
        """The person chose the stored model ``name``: load its backend's libraries ahead of
        Predict (a model of an unknown or unreadable kind: Predict will say so)."""
        backend = next((m.get("backend") for m in list_models() if m["name"] == name), None)
        if backend in BACKENDS:
            self._load_backend(str(backend))

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
    def _refresh_layers(self, _event: Any = None) -> None:
        images = input_names(self.viewer.layers, Image)
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels) and ly.name != PREVIEW]
        best = images[0] if images else None
        refill_combo(self.image_combo, images, best)
        refill_combo(self.predict_image_combo, images, best)
        names = [ly.name for ly in labels]
        refill_combo(self.labels_combo, names, annotation_choice(labels), blank=True)
        self._keep_present_pairs()

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

    @when_idle
    def train(self) -> None:
        """Train (or continue training) the named model on the pairs, in a worker."""
        backend = self._backend()
        name = self.name_edit.text().strip()
        model_folder(name)
        settings = self._settings()
        layers = self.training_layers()
        images = [layer_data(img) for img, _ in layers]
        # Copies: the user may keep painting while the worker trains.
        annotations = [np.array(lab.data, copy=True) for _, lab in layers]
        if not any((a > 1).any() for a in annotations):
            raise BadInputError(
                "The annotation is empty: paint some cells (labels 2, 3, ...) and some "
                "background (label 1) first."
            )
        preview, z = self._current_slice(*layers[0])
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
                device = self.state.device
                said = not device or device in event.message  # waiting, or already named
                self.status.setText(event.message if said else f"{event.message} ({device})")
            return
        self.state.step = event.step
        self.loss_plot.add(event.step, float(loss))
        self.progress_bar.setMaximum(max(event.total, 1))
        self.progress_bar.setValue(event.step)
        annotation = info.get("annotation")
        if annotation:
            self.state.cells = int(annotation.get("cells", 0))
        text = f"{event.message} on {self.state.device}, loss {float(loss):.4f}"
        if self.state.cells and "annotated cell" not in event.message:
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
            made_by=PREVIEW_OUTPUT,
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
        text = f"{head} ({summary['backend']} on {device}; {total} step(s) in all)."
        self.status.setText(f"{text} {info.get('warning') or 'Press Predict.'}")
