"""The prediction side of the "Sparse training" widget: the model list, Predict, Where to
annotate next and Export (bioimage.io).

Every job runs in the model worker; results become layers: a prediction one Labels layer drawn
as outlines, "where to annotate next" a disagreement map and its numbered top places.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ...core.errors import BadInputError
from ...training import BACKENDS
from ...training.uncertainty import THRESHOLD as DOUBTFUL
from ._dock import when_idle
from ._fields import model_row, refill_models
from ._layers import (
    OUTPUT_KEY,
    compact_labels,
    layer_data,
    show_layer,
    show_places,
)
from ._worker import JobRunner

__all__ = ["PREVIEW", "PredictionPanel"]

# What a person can change when a prediction holds no object (a short training finds none).
NOTHING_FOUND = (
    "train this model for more steps, give the cell diameter, or lower the minimum area."
)

PREVIEW = "Training preview"  # the training's preview layer; a prediction takes it over
PREDICTION = "{} prediction"
WHERE_NEXT = "{} where to annotate next"
PLACES = "{} places to annotate"
TOP_PLACES = 10


class PredictionPanel:
    """Mixin of the Sparse training widget (a :class:`DockWidget`): its prediction controls
    and jobs. ``device_combo`` and the annotation choice belong to the training side."""

    viewer: Any
    runner: JobRunner
    status: QLabel
    state: Any
    device_combo: QComboBox
    image_combo: QComboBox
    labels_combo: QComboBox

    def _build_prediction(self) -> tuple[QFormLayout, QHBoxLayout]:
        """The model/image/diameter form and the row of Predict, Where next and Export."""
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
        form = QFormLayout()
        form.addRow("Model", models)
        form.addRow("Predict on", self.predict_image_combo)
        form.addRow("Diameter", self.predict_diameter_spin)
        form.addRow("Min area", self.min_area_spin)
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
        self.export_button.clicked.connect(self.export)
        row = QHBoxLayout()
        for button in (self.predict_button, self.where_button, self.export_button):
            row.addWidget(button)
        return form, row

    def _refresh_models(self, select: str | None = None) -> None:
        """Fill the model list with the store's segmentation models (no counters)."""
        refill_models(self.model_combo, BACKENDS, select)

    def _model_name(self) -> str:
        name = self.model_combo.currentText()
        if not name:
            raise BadInputError("No trained model yet: press Train first.")
        return name

    def _prediction_inputs(self) -> tuple[str, str, Image]:
        """The chosen model, image name and image layer (checked)."""
        image_name = self.predict_image_combo.currentText()
        if not image_name or image_name not in self.viewer.layers:
            raise BadInputError("No image layer to predict on: open an image first.")
        name = self._model_name()
        self.state.stopping = False
        return name, image_name, self.viewer.layers[image_name]

    @when_idle
    def predict(self) -> None:
        """Predict the chosen image with the chosen model (a Labels layer of outlines)."""
        name, image_name, image = self._prediction_inputs()
        kwargs = {
            "name": name,
            "device": self.device_combo.currentText(),
            "image": np.asarray(layer_data(image)),
            "rgb": bool(image.rgb),
            "diameter": self.predict_diameter_spin.value() or None,
            "min_area": self.min_area_spin.value(),
        }

        def done(result: dict[str, Any]) -> None:
            self._predicted(image_name, image, name, result)

        self.runner.run_in_worker("predict", kwargs, done, f"Predicting {image_name}")

    @when_idle
    def where_next(self) -> None:
        """Show where the chosen model is least sure on the chosen 2D image: a map and the
        top places, numbered; the chosen annotation's painted pixels are left out."""
        name, image_name, image = self._prediction_inputs()
        data = np.asarray(layer_data(image))
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
        top = result.places[:TOP_PLACES]
        names = (WHERE_NEXT.format(image_name), PLACES.format(image_name))
        show_places(self.viewer, result.map, [[p.y, p.x] for p in top], names, image)
        if not top:
            self.status.setText(
                f"The model's 8 views agree on every object in '{image_name}' and nowhere "
                "else disagree over a cell's worth of pixels: no place to suggest. Check its "
                "prediction, or annotate cells it gets wrong."
            )
            return
        clear = sum(place.mean >= DOUBTFUL for place in result.places)
        self.status.setText(
            f"{len(result.places)} place(s) where the model's views disagree in "
            f"'{image_name}' ({clear} clearly, mean doubt {DOUBTFUL} or more); the top "
            f"{len(top)} are numbered. Annotate there and train again."
        )

    @when_idle
    def export(self, path: str | None = None) -> None:
        """Export the chosen model as a bioimage.io package (asks where unless ``path``).

        The test input is the chosen 2D grayscale image when there is one (at its diameter
        setting), otherwise synthetic cells at the model's scale."""
        name = self._model_name()
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export to bioimage.io", f"{name}.zip", "bioimage.io packages (*.zip)"
            )
            if not path:
                return
        image_name = self.predict_image_combo.currentText()
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None  # noqa: SIM401 (a LayerList has no get)
        data = np.asarray(layer_data(image)) if image is not None else None
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
        made_by = f"prediction of '{model}'"
        if name not in layers and PREVIEW in layers and isinstance(layers[PREVIEW], Labels):
            # The prediction supersedes the training preview: it takes over that layer
            # rather than lying on top of it (and napari builds no new layer: ~0.17 s).
            preview = layers[PREVIEW]
            preview.metadata = {**preview.metadata, OUTPUT_KEY: made_by}
            preview.name = name
        layer = show_layer(
            self.viewer,
            "labels",
            labels,
            name,
            made_by,
            scale=image.scale[-nd:],
            translate=image.translate[-nd:],
            opacity=0.7,
        )
        layer.contour = 1
        n = int(result["objects"])
        diameters = result["diameters"]
        shown = f", diameter {np.median(diameters):.1f} px" if diameters else ""
        hint = "" if n else f" Nothing found: {NOTHING_FOUND}"
        self.status.setText(
            f"Predicted {n} object(s) in '{image_name}' with '{model}' "
            f"({result['backend']} on {result['device']}{shown}).{hint}"
        )
