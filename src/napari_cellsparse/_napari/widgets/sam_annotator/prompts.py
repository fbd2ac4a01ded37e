"""The SAM annotator's prompts: boxes and points become new objects in the annotation.

Decoding a prompt takes tens of milliseconds and runs on the main thread, writing through
napari's undo history; a box drawn before the embedding is ready waits in the state until
the embedding job is done. Point prompts show a live preview until committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_info

from ....core.errors import BadInputError, CellsparseError
from ....core.masks import PromptMask
from ....core.sparse_labels import SPARSE_KEY, next_free_id, writable
from ....formats.polygons import mask_outline
from .._dock import guarded
from .state import ANNOTATION, OUTLINES, POINTS, PREVIEW, PROMPTS

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QComboBox, QLabel, QRadioButton

    from ....sam.prompting import Promptable
    from .._worker import JobRunner
    from .state import SamState

__all__ = ["PromptsMixin"]


class PromptsMixin:
    """Prompt layers, box and point prompts, and writing objects into the annotation."""

    viewer: napari.Viewer
    state: SamState
    runner: JobRunner
    status: QLabel
    labels_combo: QComboBox
    box_mode: QRadioButton
    positive_button: QRadioButton

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

    @guarded
    def segment_all_boxes(self) -> None:
        """Segment every rectangle of the prompts layer again (new objects for each)."""
        shapes = self.prompts_layer()
        self.state.pending_boxes = [
            s for s, t in zip(shapes.data, shapes.shape_type, strict=True) if t == "rectangle"
        ]
        self.state.boxes_done = len(shapes.data)
        self._process_pending()

    def _answering(self) -> Promptable:
        """What the prompts go to: the large image tile by tile, or the prompter."""
        target = self.state.tiled or self.state.prompter
        if target is None:
            raise BadInputError("No image is set: compute the image embedding first.")
        return target

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
            masks = self._answering().boxes(boxes)
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
            self._set_preview(self._answering().points(xy, positive))
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

    @guarded
    def commit_points(self) -> None:
        """Write the point-prompt preview as a new object and clear the points."""
        if self.state.preview is None:
            show_info("Nothing to commit: add a positive point on an object first.")
            return
        self._write([self.state.preview])
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
