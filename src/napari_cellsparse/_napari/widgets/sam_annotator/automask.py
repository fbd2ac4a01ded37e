"""The SAM annotator's "Automask" panel: every object SAM finds, into layers to review.

The spin boxes take their ranges from the engine's
:data:`~napari_cellsparse.sam.automask_params.AUTOMASK_BOUNDS`. A run keeps its set-up (the
decoded candidates, :class:`~napari_cellsparse.sam.automask.AutomaskGenerator`): when only
thresholds change (predicted IoU, stability, NMS, minimum area), the next run filters those
again and decodes nothing; a new grid, model or image decodes again. A large (tiled) image
runs the whole generator per tile every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ....core.errors import BadInputError
from ....core.progress import Progress
from ....sam.automask_params import AUTOMASK_BOUNDS, PRESETS, AutomaskParams
from ....sam.automask_result import label_masks
from .._dock import guarded
from .._layers import compact_labels, show_layer
from .state import AUTOMASK, AUTOMASK_OUTLINES

if TYPE_CHECKING:
    import napari

    from .._worker import JobRunner
    from .state import SamState

__all__ = ["AutomaskPanel"]

# Spin box steps (the ranges are the engine's bounds); others step by 1 or 0.01.
_STEPS = {"min_mask_region_area": 10, "stability_score_offset": 0.1}
# Shown unfolded; the other parameters are under "Advanced".
_MAIN = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")


class AutomaskPanel:
    """The automask controls, its job (set-up once, generate per threshold change) and
    keeping its objects."""

    viewer: napari.Viewer
    state: SamState
    runner: JobRunner
    status: QLabel

    def _build_automask(self) -> QWidget:
        """The "Automask" section: preset, main parameters, the rest folded away."""
        self.automask_spins: dict[str, Any] = {}
        for name, value in AutomaskParams().as_dict().items():
            bound = AUTOMASK_BOUNDS[name]
            if bound.integer:
                spin = QSpinBox()
                spin.setRange(int(bound.low), int(bound.high))
            else:
                spin = QDoubleSpinBox()
                spin.setDecimals(3)
                spin.setRange(bound.low, bound.high)
            spin.setSingleStep(_STEPS.get(name, 1 if bound.integer else 0.01))
            spin.setValue(value)
            self.automask_spins[name] = spin
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        main = QFormLayout()
        main.addRow("Preset", self.preset_combo)
        advanced = QFormLayout()
        for name, spin in self.automask_spins.items():
            form = main if name in _MAIN else advanced
            form.addRow(name.replace("_", " ").capitalize(), spin)
        folded = QCollapsible("Advanced automask parameters")
        inner = QWidget()
        inner.setLayout(advanced)
        folded.addWidget(inner)
        self.automask_button = QPushButton("Automask (whole image)")
        self.automask_button.clicked.connect(self.run_automask)
        self.keep_button = QPushButton("Add automask objects to annotation")
        self.keep_button.clicked.connect(self.keep_automask)
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(QLabel("<b>Automask</b>"))
        column.addLayout(main)
        column.addWidget(folded)
        column.addWidget(self.automask_button)
        column.addWidget(self.keep_button)
        return box

    def _apply_preset(self, name: str) -> None:
        values = {**AutomaskParams().as_dict(), **PRESETS.get(name, {})}
        for key, value in values.items():
            self.automask_spins[key].setValue(value)

    def automask_params(self) -> AutomaskParams:
        """The parameters set in the widget (checked: out-of-range values are refused)."""
        return AutomaskParams.from_dict(
            {name: spin.value() for name, spin in self.automask_spins.items()}
        )

    @guarded
    def run_automask(self) -> None:
        """Every object SAM finds on the current slice, as new layers (in a worker)."""
        target = self._target()
        params = self.automask_params()
        image, channels, reuse, state = target.image, target.channels, target.reuse, self.state
        key, tiling = target.key, target.tiling
        tiled = state.tiled if state.image_key == key and reuse is not None else None
        setup = (target.spec, key, params.setup_key())
        kept = state.automask if reuse is not None and state.automask_key == setup else None

        def job():
            from ....sam.automask import AutomaskGenerator
            from ....sam.large_images import TiledImage

            prompter = yield from self._prompter(target.spec, reuse)
            if tiling is not None:
                large = tiled or TiledImage(prompter, image, channels, *tiling)
                result = yield from large.automask(params)
                return prompter, large, None, result.labels_and_outlines()
            data = np.asarray(image)
            generator = kept
            if generator is None or generator.signature != prompter.signature(data, channels):
                generator = AutomaskGenerator(prompter, params)  # keeps every candidate
                yield from generator.initialize(data, channels)
            else:
                yield Progress(0, 1, "Filtering the decoded candidates")
            return prompter, None, generator, generator.generate(params).labels_and_outlines()

        def done(outcome: Any) -> None:
            prompter, large, generator, (labels, polygons) = outcome
            state.prompter, state.spec = prompter, target.spec
            state.image_key, state.tiled = key, large
            state.automask, state.automask_key = generator, setup if generator else None
            self._show_automask(target.layer, labels, polygons)

        self.runner.start(job, done, "Automatic masks")

    def _show_automask(self, image: Image, labels: np.ndarray, polygons: list) -> None:
        ndim = image.data.ndim - (1 if image.rgb else 0)
        scale = image.scale[-2:] if ndim >= 2 else None
        labels = compact_labels(labels, self.viewer)
        made_by = "SAM automatic masks"
        show_layer(self.viewer, "labels", labels, AUTOMASK, made_by, scale=scale, opacity=0.5)
        show_layer(
            self.viewer,
            "shapes",
            (polygons, "polygon"),
            AUTOMASK_OUTLINES,
            scale=scale,
            edge_color="magenta",
            face_color="transparent",
            edge_width=1,
        )
        self.status.setText(
            f"Automask: {int(labels.max())} objects. Delete unwanted ones in "
            f"'{AUTOMASK}', then add the rest to the annotation."
        )

    @guarded
    def keep_automask(self) -> None:
        """Copy the objects of the automask layer into the annotation as new objects.

        Annotated pixels are never overwritten: an object only fills unannotated ones.
        """
        if AUTOMASK not in self.viewer.layers:
            self.runner.report(BadInputError("Run Automask first."))
            return
        image, _, prefix = self._image()
        labels = self._annotation(image)
        automask = np.asarray(self.viewer.layers[AUTOMASK].data)
        if automask.shape != labels.data.shape[len(prefix) :]:
            self.runner.report(BadInputError("The automask layer does not match the annotation."))
            return
        written = self._write(label_masks(automask))
        self.status.setText(f"Added {written} objects to '{labels.name}'.")
