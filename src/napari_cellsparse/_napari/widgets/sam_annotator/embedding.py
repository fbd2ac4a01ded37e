"""The SAM annotator's image side: which image slice, which model, and its embedding.

The model is loaded and the current slice embedded in a background job (progress, cancel);
the prompter keeps the embedding (memory LRU plus a bounded folder on disk). An image much
larger than a tile becomes a :class:`~napari_cellsparse.sam.large_images.TiledImage`: a prompt
first has the job embed the tiles it needs (once; cached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

from ....core.errors import BadInputError, CellsparseError
from ....core.progress import Progress
from ....sam.large_images import needs_tiles
from .._dock import guarded

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QComboBox, QLabel, QLineEdit, QSpinBox

    from ....sam.prompting import SamPrompter
    from .._worker import JobRunner
    from .state import SamState

__all__ = ["EmbeddingMixin", "Target"]


@dataclass(frozen=True)
class Target:
    """What a job works on: the image slice, the model, and what can be reused."""

    layer: Image
    image: Any  # the slice: YX or YXC, possibly lazy (dask, zarr)
    prefix: tuple[int, ...]  # the slice's index in the layer's leading dimensions
    channels: list[int] | None
    spec: tuple[str, str, str]  # model, weights, device
    key: tuple[Any, ...]  # the embedding's image key (see ``_image_key``)
    tiling: tuple[int, int] | None  # tile size and overlap when the image is tiled
    reuse: SamPrompter | None  # the loaded prompter, when the spec is unchanged


class EmbeddingMixin:
    """The image slice, the model spec and the embedding job of the SAM annotator."""

    viewer: napari.Viewer
    state: SamState
    runner: JobRunner
    status: QLabel
    image_combo: QComboBox
    channels_edit: QLineEdit
    model_combo: QComboBox
    device_combo: QComboBox
    weights_edit: QLineEdit
    tile_spin: QSpinBox
    overlap_spin: QSpinBox

    def _tiling(self, data: Any) -> tuple[int, int] | None:
        """Tile size and overlap when ``data`` (YX or YXC) is large enough to tile."""
        tile = self.tile_spin.value()
        return (tile, self.overlap_spin.value()) if needs_tiles(data.shape, tile) else None

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
        from ....sam.prompting import SamPrompter

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

    def _target(self) -> Target:
        """What the next job works on (raises :class:`CellsparseError` on a bad choice)."""
        layer, image, prefix = self._image()
        channels = self._channels()
        spec = self._spec()
        reuse = self.state.prompter if self.state.spec == spec else None
        key = self._image_key(layer, prefix)
        return Target(layer, image, prefix, channels, spec, key, self._tiling(image), reuse)

    @guarded
    def compute_embedding(self) -> None:
        """Load the model if needed and embed the current image slice (in a worker)."""
        target = self._target()
        spec, tiling, state = target.spec, target.tiling, self.state

        def job():
            prompter = yield from self._prompter(spec, target.reuse)
            if tiling is None:
                yield from prompter.set_image(np.asarray(target.image), target.channels)
                return prompter, None
            from ....sam.large_images import TiledImage

            yield Progress(0, 1, "reading the image's intensity range")
            return prompter, TiledImage(prompter, target.image, target.channels, *tiling)

        def done(outcome: Any) -> None:
            prompter, tiled = outcome
            state.prompter, state.spec, state.image_key = prompter, spec, target.key
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
