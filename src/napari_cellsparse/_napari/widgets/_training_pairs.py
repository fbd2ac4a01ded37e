"""The training pairs of the "Sparse training" widget: which image layer each annotation
(Labels) layer annotates, checked to cover the same pixels, and the slice in view.

Layers are identified by their stable ``unique_id``: napari hands plugins a proxy viewer whose
layers are new wrapper objects on every access, so ``id()`` would not find them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QListWidget, QPushButton

from ...core.errors import BadInputError
from ...core.images import MAX_CHANNELS
from ._dock import guarded
from ._layers import layer_data

__all__ = ["TrainingPairs"]


class TrainingPairs:
    """Mixin of the Sparse training widget (a :class:`DockWidget`): the image/annotation
    choice, the list of pairs to train on, and their checks."""

    viewer: Any
    status: QLabel
    state: Any

    def _build_pairs(self, form: QFormLayout) -> None:
        """The image and annotation choices, Add pair / Remove and the list of pairs."""
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
        row = QHBoxLayout()
        row.addWidget(self.add_pair_button)
        row.addWidget(self.remove_pair_button)
        form.addRow("Image", self.image_combo)
        form.addRow("Annotation", self.labels_combo)
        form.addRow(row)
        form.addRow(self.pairs_list)

    def _layer_by_uid(self, uid: str) -> Any:
        for layer in self.viewer.layers:
            if layer.unique_id == uid:
                return layer
        return None

    def _keep_present_pairs(self) -> None:
        """Drop the pairs whose layers were removed; show the rest."""
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
                "No annotation layer chosen: pick one under Annotation, or add a Labels layer "
                "and paint some cells (2, 3, ...) and background (1); 0 means not annotated."
            )
        image, labels = self.viewer.layers[image_name], self.viewer.layers[labels_name]
        self._check_pair(image, labels)
        return image, labels

    @staticmethod
    def _check_pair(image: Image, labels: Labels) -> None:
        ishape, lshape = tuple(layer_data(image).shape), tuple(labels.data.shape)
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

    @guarded
    def add_pair(self) -> None:
        """Add the image/annotation chosen above to the training pairs."""
        image, labels = self._chosen_pair()
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
        data = layer_data(image)
        z = None
        if labels.data.ndim == 3:
            world = labels.world_to_data(self.viewer.dims.point)
            z = int(np.clip(round(float(world[0])), 0, labels.data.shape[0] - 1))
            data = data[:, z] if data.shape[1:] == labels.data.shape else data[z]
        data = np.asarray(data)
        if data.ndim == 3 and data.shape[-1] > MAX_CHANNELS >= data.shape[0]:
            data = np.moveaxis(data, 0, -1)  # CYX → YXC
        return data, z
