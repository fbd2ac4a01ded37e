"""The "SAM annotator" dock widget: boxes and points become objects in a Labels layer.

Thin front end over :class:`~napari_cellsparse.sam.prompting.SamPrompter`: the image
embedding is computed in a background worker (progress, cancel); decoding a prompt takes
tens of milliseconds and runs on the main thread, writing through napari's undo history.
An image much larger than a tile goes through
:class:`~napari_cellsparse.sam.large_images.TiledImage`: a prompt first has the worker embed
the tile it needs (once; cached), then it is decoded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from scipy import ndimage as ndi
from superqt import QCollapsible

from ...core.devices import DEVICE_CHOICES
from ...core.errors import BadInputError, CellsparseError
from ...core.masks import PromptMask
from ...core.paths import data_home
from ...core.progress import Progress
from ...core.sparse_labels import next_free_id, writable
from ...formats.outlines import mask_outline
from ...sam.automask import PRESETS as AUTOMASK_PRESETS
from ...sam.automask import AutomaskParams
from ...sam.embedding import EmbeddingCache
from ...sam.large_images import TILE_ABOVE, needs_tiles
from ...sam.weights import MODEL_TYPES, download_weights, find_weights
from ..geojson_io import SPARSE_KEY
from ._dock import DockWidget
from ._layers import compact_labels, refill_combo, show_layer

if TYPE_CHECKING:
    import napari

    from ...sam.large_images import TiledImage
    from ...sam.prompting import SamPrompter

__all__ = ["SamAnnotatorWidget"]

PROMPTS, POINTS, OUTLINES, PREVIEW, ANNOTATION, AUTOMASK, AUTOMASK_OUTLINES = (
    "SAM prompts",
    "SAM points",
    "SAM outlines",
    "SAM preview",
    "SAM annotation",
    "SAM automask",
    "SAM automask outlines",
)


@dataclass
class SamState:
    """What the widget knows between events (owned by one widget, never global)."""

    prompter: SamPrompter | None = None
    spec: tuple[str, str, str] | None = None  # model, weights, device of ``prompter``
    image_key: tuple[Any, ...] | None = None  # layer and slice the embedding belongs to
    tiled: TiledImage | None = None  # the large image being prompted tile by tile
    boxes_done: int = 0
    pending_boxes: list[np.ndarray] = field(default_factory=list)
    preview: PromptMask | None = None
    # Memory LRU plus a bounded folder on disk: a large image's tiles, or an image opened
    # again in a later session, are not embedded twice.
    cache: EmbeddingCache = field(
        default_factory=lambda: EmbeddingCache(disk_dir=data_home() / "embeddings")
    )


class SamAnnotatorWidget(DockWidget):
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
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICE_CHOICES))
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

    def _tiling(self, data: Any) -> tuple[int, int] | None:
        """Tile size and overlap when ``data`` (YX or YXC) is large enough to tile."""
        tile = self.tile_spin.value()
        return (tile, self.overlap_spin.value()) if needs_tiles(data.shape, tile) else None

    def _build_automask(self) -> QWidget:
        """The "Automask" section: preset, main parameters, the rest folded away."""
        defaults = AutomaskParams().as_dict()
        self.automask_spins: dict[str, Any] = {}
        ranges = {
            "points_per_side": (1, 256, 1),
            "points_per_batch": (1, 4096, 1),
            "crop_n_layers": (0, 4, 1),
            "crop_n_points_downscale_factor": (1, 64, 1),
            "min_mask_region_area": (0, 10**6, 10),
            "stability_score_offset": (0.0, 100.0, 0.1),
        }
        for name, value in defaults.items():
            lo, hi, step = ranges.get(name, (0.0, 1.0, 0.01))
            spin = QSpinBox() if isinstance(value, int) else QDoubleSpinBox()
            if isinstance(spin, QDoubleSpinBox):
                spin.setDecimals(3)
            spin.setRange(lo, hi)
            spin.setSingleStep(step)
            spin.setValue(value)
            self.automask_spins[name] = spin
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(AUTOMASK_PRESETS))
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        main = QFormLayout()
        main.addRow("Preset", self.preset_combo)
        shown = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")
        for name in (*shown, "min_mask_region_area"):
            main.addRow(name.replace("_", " ").capitalize(), self.automask_spins[name])
        advanced = QFormLayout()
        for name, spin in self.automask_spins.items():
            if name not in (*shown, "min_mask_region_area"):
                advanced.addRow(name.replace("_", " ").capitalize(), spin)
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
        values = {**AutomaskParams().as_dict(), **AUTOMASK_PRESETS.get(name, {})}
        for key, value in values.items():
            self.automask_spins[key].setValue(value)

    def automask_params(self) -> AutomaskParams:
        """The parameters set in the widget (checked: out-of-range values are refused)."""
        return AutomaskParams.from_dict(
            {name: spin.value() for name, spin in self.automask_spins.items()}
        )

    def _refresh_layers(self, _event: Any = None) -> None:
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            names = [ly.name for ly in self.viewer.layers if isinstance(ly, kind)]
            if kind is Labels:
                names = [n for n in names if n != PREVIEW]
            refill_combo(combo, names)

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt)"
        )
        if path:
            self.weights_edit.setText(path)

    # -- the image and its embedding --------------------------------------------------
    def _image(self) -> tuple[Image, Any, tuple[int, ...]]:
        """The chosen image layer, its current 2D slice (YX or YXC) and the slice index.

        The slice is what the layer holds (a dask or zarr array stays lazy; a multiscale
        image gives its full-resolution level)."""
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise BadInputError("No image layer: open an image first (File > Open Sample).")
        layer = self.viewer.layers[name]
        spatial = layer.data.ndim - (1 if layer.rgb else 0)
        if spatial < 2 or spatial > 4:
            raise BadInputError(
                f"The image '{name}' has {layer.data.ndim} dimensions; the SAM annotator works "
                "on 2D images and on stacks of up to 4 dimensions (e.g. TZYX), one slice at a time."
            )
        prefix = tuple(int(i) for i in self.viewer.dims.current_step[: spatial - 2])
        data = layer.data[0] if layer.multiscale else layer.data
        if prefix:
            data = data[prefix]
        return layer, data if hasattr(data, "shape") else np.asarray(data), prefix

    def _channels(self) -> list[int] | None:
        text = self.channels_edit.text().strip()
        if not text:
            return None
        try:
            return [int(c) for c in text.replace(" ", "").split(",") if c]
        except ValueError:
            raise BadInputError(
                f"Channels must be numbers separated by commas, not {text!r}."
            ) from None

    def _image_key(self, layer: Image, prefix: tuple[int, ...]) -> tuple[Any, ...]:
        # napari hands plugins a proxy viewer whose layers are new wrapper objects on every
        # access, so identify the layer by its stable unique id, not by ``id()``.
        tiling = (self.tile_spin.value(), self.overlap_spin.value())
        return (layer.unique_id, prefix, self.channels_edit.text(), tiling)

    def _spec(self) -> tuple[str, str, str]:
        return (
            self.model_combo.currentText(),
            self.weights_edit.text().strip(),
            self.device_combo.currentText(),
        )

    def _ready(self) -> bool:
        try:
            layer, _, prefix = self._image()
        except CellsparseError:
            return False
        return (
            self.state.prompter is not None
            and self.state.spec == self._spec()
            and self.state.image_key == self._image_key(layer, prefix)
        )

    def _prompter(self, spec: tuple[str, str, str], reuse: SamPrompter | None) -> Any:
        """Worker-side generator: ``reuse``, or SAM loaded per ``spec`` (model, weights, device)."""
        from ...sam.prompting import SamPrompter

        if reuse is not None:
            return reuse
        yield Progress(0, 1, f"loading SAM {spec[0]}")
        return SamPrompter.load(spec[0], spec[1] or None, spec[2], self.state.cache)

    def _embed_first(self, regions: list[Any], then: Any) -> bool:
        """Start embedding the tiles among ``regions`` not embedded yet, then call ``then``;
        False when there is nothing to embed."""
        tiled = self.state.tiled
        missing = tiled.missing(regions) if tiled is not None else []
        if not missing:
            return False
        if not self.runner.busy:
            self.runner.start(
                lambda: tiled.embed(missing),
                lambda _count: then(),
                f"Embedding {len(missing)} tile(s) for this prompt",
            )
        return True

    def compute_embedding(self) -> None:
        """Load the model if needed and embed the current image slice (in a worker)."""
        try:
            layer, image, prefix = self._image()
            channels = self._channels()
        except CellsparseError as err:
            self.runner.report(err)
            return
        spec = self._spec()
        state = self.state
        reuse = state.prompter if state.spec == spec else None
        key = self._image_key(layer, prefix)

        tiling = self._tiling(image)

        def job():
            prompter = yield from self._prompter(spec, reuse)
            if tiling is None:
                yield from prompter.set_image(np.asarray(image), channels)
                return prompter, None
            from ...sam.large_images import TiledImage

            yield Progress(0, 1, "reading the image's intensity range")
            return prompter, TiledImage(prompter, image, channels, *tiling)

        def done(outcome: Any) -> None:
            prompter, tiled = outcome
            state.prompter, state.spec, state.image_key = prompter, spec, key
            state.tiled = tiled
            if tiled is None:
                self.status.setText(f"SAM {spec[0]} on {prompter.device}: embedding ready.")
            else:
                h, w = tiled.shape
                self.status.setText(
                    f"SAM {spec[0]} on {prompter.device}: large image ({w} x {h}), "
                    f"{len(tiled.tiles)} tiles; each is embedded when a prompt needs it."
                )
            self._process_pending()
            self._update_preview()

        self.runner.start(job, done, "Computing SAM embedding")

    def run_automask(self) -> None:
        """Every object SAM finds on the current slice, as new layers (in a worker)."""
        try:
            layer, image, prefix = self._image()
            channels = self._channels()
            params = self.automask_params()
        except CellsparseError as err:
            self.runner.report(err)
            return
        spec = self._spec()
        state = self.state
        reuse = state.prompter if state.spec == spec else None
        key = self._image_key(layer, prefix)
        tiling = self._tiling(image)
        tiled = state.tiled if state.image_key == key and reuse is not None else None

        def job():
            from ...sam.automask import generate_masks
            from ...sam.large_images import TiledImage

            prompter = yield from self._prompter(spec, reuse)
            if tiling is None:
                result = yield from generate_masks(prompter, np.asarray(image), params, channels)
                return prompter, None, _automask_layers(result)
            large = tiled or TiledImage(prompter, image, channels, *tiling)
            result = yield from large.automask(params)
            return prompter, large, _automask_layers(result)

        def done(outcome: Any) -> None:
            prompter, large, (labels, polygons) = outcome
            state.prompter, state.spec = prompter, spec
            state.image_key, state.tiled = key, large
            self._show_automask(layer, labels, polygons)

        self.runner.start(job, done, "Automatic masks")

    def _show_automask(self, image: Image, labels: np.ndarray, polygons: list) -> None:
        ndim = image.data.ndim - (1 if image.rgb else 0)
        scale = image.scale[-2:] if ndim >= 2 else None
        labels = compact_labels(labels, self.viewer)
        show_layer(self.viewer, "labels", labels, AUTOMASK, scale=scale, opacity=0.5)
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

    def keep_automask(self) -> None:
        """Copy the objects of the automask layer into the annotation as new objects.

        Annotated pixels are never overwritten: an object only fills unannotated ones.
        """
        if AUTOMASK not in self.viewer.layers:
            self.runner.report(BadInputError("Run Automask first."))
            return
        try:
            image, _, prefix = self._image()
            labels = self._annotation(image)
        except CellsparseError as err:
            self.runner.report(err)
            return
        automask = np.asarray(self.viewer.layers[AUTOMASK].data)
        if automask.shape != labels.data.shape[len(prefix) :]:
            self.runner.report(BadInputError("The automask layer does not match the annotation."))
            return
        masks = []
        for index, region in enumerate(ndi.find_objects(automask)):
            if region is not None:
                window = automask[region] == index + 1
                y0, x0 = region[0].start, region[1].start
                masks.append(PromptMask(window, y0, x0, 1.0, automask.shape))
        written = self._write(masks)
        self.status.setText(f"Added {written} objects to '{labels.name}'.")

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

    # -- layers the widget writes to ---------------------------------------------------
    def _annotation(self, image: Image) -> Labels:
        name = self.labels_combo.currentText()
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        if name and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if tuple(layer.data.shape) != tuple(shape):
                raise BadInputError(
                    f"The annotation '{name}' ({layer.data.shape}) does not match the image "
                    f"({tuple(shape)}); choose another annotation layer or remove it."
                )
            return layer
        layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.int32),
            name=ANNOTATION,
            scale=image.scale[: len(shape)],
            metadata={SPARSE_KEY: True},
        )
        self.labels_combo.setCurrentText(layer.name)
        return layer

    def _layer(self, name: str, kind: type, image: Image, **kwargs: Any) -> Any:
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], kind):
            return self.viewer.layers[name]
        ndim = image.data.ndim - (1 if image.rgb else 0)
        adder = {Shapes: self.viewer.add_shapes, Points: self.viewer.add_points}[kind]
        return adder(name=name, ndim=ndim, scale=image.scale[:ndim], **kwargs)

    def prompts_layer(self) -> Shapes:
        """The Shapes layer whose rectangles are box prompts (created when missing)."""
        layer, _, _ = self._image()
        shapes = self._layer(
            PROMPTS, Shapes, layer, edge_color="yellow", face_color="transparent", edge_width=2
        )
        if self._on_prompts not in shapes.events.data.callbacks:
            shapes.events.data.connect(self._on_prompts)
            self.state.boxes_done = 0
        return shapes

    def points_layer(self) -> Points:
        """The Points layer of positive/negative point prompts (created when missing)."""
        layer, _, _ = self._image()
        points = self._layer(
            POINTS,
            Points,
            layer,
            size=8,
            features={"positive": np.zeros(0, bool)},
            face_color="lime",
        )
        if self._on_points not in points.events.data.callbacks:
            points.feature_defaults["positive"] = True
            points.events.data.connect(self._on_points)
            points.bind_key("c", lambda _layer: self.commit_points(), overwrite=True)
        return points

    def _mode_changed(self) -> None:
        try:
            layer = self.prompts_layer() if self.box_mode.isChecked() else self.points_layer()
        except CellsparseError as err:
            self.runner.report(err)
            return
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle" if isinstance(layer, Shapes) else "add"

    def _point_kind_changed(self) -> None:
        if POINTS in self.viewer.layers:
            points = self.viewer.layers[POINTS]
            positive = self.positive_button.isChecked()
            points.feature_defaults["positive"] = positive
            points.current_face_color = "lime" if positive else "red"

    # -- box prompts -------------------------------------------------------------------
    def _on_prompts(self, event: Any) -> None:
        action = str(getattr(event, "action", ""))
        shapes = self.viewer.layers[PROMPTS]
        if action == "removed":
            self.state.boxes_done = min(self.state.boxes_done, len(shapes.data))
        if action != "added":
            return
        new = [
            s
            for s, t in zip(
                shapes.data[self.state.boxes_done :],
                shapes.shape_type[self.state.boxes_done :],
                strict=True,
            )
            if t == "rectangle"
        ]
        self.state.boxes_done = len(shapes.data)
        self.state.pending_boxes.extend(new)
        self._process_pending()

    def segment_all_boxes(self) -> None:
        """Segment every rectangle of the prompts layer again (new objects for each)."""
        try:
            shapes = self.prompts_layer()
        except CellsparseError as err:
            self.runner.report(err)
            return
        self.state.pending_boxes = [
            s for s, t in zip(shapes.data, shapes.shape_type, strict=True) if t == "rectangle"
        ]
        self.state.boxes_done = len(shapes.data)
        self._process_pending()

    def _process_pending(self) -> None:
        if not self.state.pending_boxes:
            return
        if not self._ready():
            if not self.runner.busy:
                self.compute_embedding()
            return
        corners = self.state.pending_boxes
        boxes = np.array(
            [[c[:, -1].min(), c[:, -2].min(), c[:, -1].max(), c[:, -2].max()] for c in corners]
        )
        tiled = self.state.tiled
        try:
            if tiled is not None and self._embed_first(
                tiled.regions_for_boxes(boxes), self._process_pending
            ):
                return  # back here once the tiles these boxes need are embedded
            self.state.pending_boxes = []
            masks = (tiled or self.state.prompter).boxes(boxes)
            written = self._write(masks)
        except CellsparseError as err:
            self.state.pending_boxes = []
            self.runner.report(err)
            return
        self.status.setText(f"Added {written} object(s) from {len(boxes)} box(es).")

    # -- point prompts -----------------------------------------------------------------
    def _on_points(self, event: Any) -> None:
        if str(getattr(event, "action", "")) in ("added", "removed", "changed"):
            self._update_preview()

    def _update_preview(self) -> None:
        """Decode the current point prompts into the preview layer."""
        if POINTS not in self.viewer.layers:
            return
        points = self.viewer.layers[POINTS]
        if len(points.data) == 0:
            self._set_preview(None)
            return
        if not self._ready():
            if not self.runner.busy:
                self.compute_embedding()
            return
        xy = points.data[:, [-1, -2]]
        positive = np.asarray(points.features["positive"], dtype=int)
        tiled = self.state.tiled
        try:
            if tiled is not None and self._embed_first(
                [tiled.region_for_points(xy, positive)], self._update_preview
            ):
                return
            self._set_preview((tiled or self.state.prompter).points(xy, positive))
        except CellsparseError as err:
            self.status.setText(str(err))  # live preview: no pop-up for every point

    def _set_preview(self, mask: PromptMask | None) -> None:
        """Show ``mask`` in the preview layer, repainting only the old and new windows (a
        large image's preview is not reallocated for every point)."""
        previous, self.state.preview = self.state.preview, mask
        layer, image, _prefix = self._image()
        shape = tuple(image.shape[:2])
        if PREVIEW in self.viewer.layers and self.viewer.layers[PREVIEW].data.shape == shape:
            preview = self.viewer.layers[PREVIEW]
            if previous is not None:
                preview.data[previous.slices] = 0
        else:
            if PREVIEW in self.viewer.layers:
                self.viewer.layers.remove(PREVIEW)
            preview = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint8), name=PREVIEW, opacity=0.5, scale=layer.scale[-2:]
            )
        if mask is not None:
            preview.data[mask.slices][mask.mask] = 1
        preview.refresh()

    def commit_points(self) -> None:
        """Write the point-prompt preview as a new object and clear the points."""
        if self.state.preview is None:
            show_info("Nothing to commit: add a positive point on an object first.")
            return
        try:
            self._write([self.state.preview])
        except CellsparseError as err:
            self.runner.report(err)
            return
        self.viewer.layers[POINTS].data = np.zeros((0, self.viewer.layers[POINTS].ndim))
        self._set_preview(None)

    # -- writing objects -----------------------------------------------------------------
    def _write(self, masks: list[PromptMask]) -> int:
        """Paint masks as new objects (undo-aware) and add their outlines; returns count."""
        image, _, prefix = self._image()
        labels = self._annotation(image)
        outlines = self._layer(
            OUTLINES, Shapes, image, edge_color="cyan", face_color="transparent", edge_width=1
        )
        next_id = next_free_id(labels.data)
        written = 0
        polygons = []
        pending: tuple[Any, int] | None = None
        with labels.block_history():
            for mask in masks:
                if pending is not None:  # written first: masks never overwrite each other
                    labels.data_setitem(*pending, refresh=False)
                    pending = None
                region = labels.data[prefix + mask.slices]
                write = writable(region, mask.mask)
                ys, xs = np.nonzero(write)
                if ys.size == 0:
                    continue
                index = (*tuple(np.full(ys.size, p) for p in prefix), ys + mask.y0, xs + mask.x0)
                pending = (index, next_id)
                next_id += 1
                written += 1
                outline = mask_outline(write, (mask.y0, mask.x0))
                if outline is not None:
                    polygons.append(
                        np.hstack([np.tile(prefix, (len(outline), 1)), outline])
                        if prefix
                        else outline
                    )
            if pending is not None:
                # The last write refreshes only the region the writes changed (a full
                # refresh re-uploads the whole image: about 40 ms at 2048 x 2048).
                labels.data_setitem(*pending, refresh=True)
        if polygons:
            outlines.add_polygons(polygons)
        return written


def _automask_layers(result: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """The automask's label image and one outline polygon per object, made in the job's
    thread: tracing hundreds of outlines on the main thread stalled the viewer."""
    labels = result.labels()
    polygons = []
    for index, region in enumerate(ndi.find_objects(labels)):
        if region is None:
            continue
        outline = mask_outline(labels[region] == index + 1, (region[0].start, region[1].start))
        if outline is not None:
            polygons.append(outline)
    return labels, polygons
