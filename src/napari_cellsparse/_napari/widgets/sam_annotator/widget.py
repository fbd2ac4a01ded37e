"""The "SAM annotator" dock widget: boxes and points become objects in a Labels layer.

Thin front end over :class:`~napari_cellsparse.sam.prompting.SamPrompter`. This module is the
dock itself (image, model, device and weights choice, the buttons, the tiling settings); its
jobs are in :mod:`.embedding` (the image embedding, in a background worker),
:mod:`.prompts` (boxes and points into the annotation) and :mod:`.automask` (the automask
panel).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ....core.errors import CellsparseError
from ....sam.large_images import TILE_ABOVE
from ....sam.weights import MODEL_TYPES, download_weights, find_weights
from .._devices import DeviceCombo
from .._dock import DockWidget
from .._layers import annotation_choice, input_names, refill_combo
from .automask import AutomaskPanel
from .embedding import EmbeddingMixin
from .prompts import PromptsMixin
from .state import PREVIEW, SamState

if TYPE_CHECKING:
    import napari

__all__ = ["SamAnnotatorWidget"]


class SamAnnotatorWidget(AutomaskPanel, PromptsMixin, EmbeddingMixin, DockWidget):
    """Dock widget: pick image, model and weights; prompt with boxes or points."""

    hint = "Choose an image and press Compute embedding."

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, SamState())

    def busy_buttons(self) -> list[QWidget]:
        return [
            self.embed_button,
            self.download_button,
            self.run_boxes_button,
            self.automask_button,
        ]

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems(list(MODEL_TYPES))
        self.model_combo.setCurrentText("vit_t")
        self.device_combo = DeviceCombo()
        self.weights_edit = QLineEdit()
        self.model_combo.currentTextChanged.connect(self._show_weights_hint)
        self._show_weights_hint()
        browse = QPushButton("...")
        browse.clicked.connect(self._browse_weights)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.weights_edit)
        weights_row.addWidget(browse)
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("all (e.g. 0,2)")
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Channels", self.channels_edit)
        form.addRow("Annotation", self.labels_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Weights", weights_row)

        self.embed_button = QPushButton("Compute embedding")
        self.embed_button.clicked.connect(self.compute_embedding)
        self.download_button = QPushButton("Download weights")
        self.download_button.clicked.connect(self.download)
        self.stop_button = self.cancel_button = QPushButton("Cancel")
        run_row = QHBoxLayout()
        for button in (self.embed_button, self.download_button, self.cancel_button):
            run_row.addWidget(button)

        self.box_mode = QRadioButton("Boxes")
        self.point_mode = QRadioButton("Points")
        self.box_mode.setChecked(True)
        modes = QButtonGroup(self)
        modes.addButton(self.box_mode)
        modes.addButton(self.point_mode)
        self.box_mode.toggled.connect(self._mode_changed)
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.box_mode)
        mode_row.addWidget(self.point_mode)
        self.run_boxes_button = QPushButton("Segment all boxes")
        self.run_boxes_button.clicked.connect(self.segment_all_boxes)
        self.positive_button = QRadioButton("Positive")
        self.negative_button = QRadioButton("Negative")
        self.positive_button.setChecked(True)
        self.positive_button.toggled.connect(self._point_kind_changed)
        self.commit_button = QPushButton("Commit object (C)")
        self.commit_button.clicked.connect(self.commit_points)
        point_row = QHBoxLayout()
        for widget in (self.positive_button, self.negative_button, self.commit_button):
            point_row.addWidget(widget)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(run_row)
        layout.addLayout(mode_row)
        layout.addWidget(self.run_boxes_button)
        layout.addLayout(point_row)
        layout.addWidget(self._build_tiling())
        layout.addWidget(self._build_automask())
        layout.addWidget(self.status)
        layout.addStretch()

    def _build_tiling(self) -> QWidget:
        """Tile size and overlap for large images, folded away."""
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setValue(1024)
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 1024)
        self.overlap_spin.setSingleStep(32)
        self.overlap_spin.setValue(128)
        self.overlap_spin.setToolTip("At least the diameter of the largest objects.")
        form = QFormLayout()
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Tile overlap", self.overlap_spin)
        inner = QWidget()
        inner.setLayout(form)
        folded = QCollapsible(f"Large images (tiled above {TILE_ABOVE} tiles)")
        folded.addWidget(inner)
        return folded

    def _refresh_layers(self, _event: Any = None) -> None:
        """The layer lists; the default annotation is never a result the plugin wrote (SAM
        then paints into a new annotation layer unless a person picks one)."""
        refill_combo(self.image_combo, input_names(self.viewer.layers, Image))
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels) and ly.name != PREVIEW]
        names = [ly.name for ly in labels]
        refill_combo(self.labels_combo, names, annotation_choice(labels), blank=True)

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt)"
        )
        if path:
            self.weights_edit.setText(path)

    def download(self) -> None:
        """Download the chosen model's official checkpoint into the cache (in a worker)."""
        model = self.model_combo.currentText()

        def done(path: str) -> None:
            self._show_weights_hint()
            self.status.setText(f"Saved {Path(path).name}; press Compute embedding.")

        self.runner.start(lambda: download_weights(model), done, f"Downloading {model} weights")

    def _show_weights_hint(self, _model: str = "") -> None:
        """Say in the empty Weights field what will be used: the cached official checkpoint,
        or that there is none yet."""
        model = self.model_combo.currentText()
        try:
            find_weights(model)
        except CellsparseError:
            hint = f"no {model} checkpoint yet: Download weights, or choose a file"
        else:
            hint = f"official {model} checkpoint (cached)"
        self.weights_edit.setPlaceholderText(hint)
