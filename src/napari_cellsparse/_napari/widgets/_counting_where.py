"""The "Where to click next" side of the "Cell counting" widget.

The chosen counter reads the *Count on* image under its 8 flips and quarter turns, each view
alone, in the model worker; the result is a map of where the views' heat maps differ and the
top places, numbered (:mod:`napari_cellsparse.counting.uncertainty`). When the image is the
training image, its points and painted background are known: places there are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Image
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton

from ._dock import when_idle
from ._fields import NONE
from ._layers import image_2d, mask_of, points_yx, show_places
from ._worker import JobRunner

__all__ = ["WHERE_KEY", "ClickPanel"]

WHERE_CLICK = "{} where to click next"
CLICK_PLACES = "{} places to click"
TOP_PLACES = 10
WHERE_KEY = "where_to_click"  # in the metadata of its layers: not inputs to train or count


class ClickPanel:
    """Mixin of the Cell counting widget (a :class:`DockWidget`): its "Where to click next"
    button and job. The image, points, background and counter choices belong to the widget."""

    viewer: Any
    runner: JobRunner
    status: QLabel
    device_combo: QComboBox
    image_combo: QComboBox
    points_combo: QComboBox
    background_combo: QComboBox
    count_image_combo: QComboBox
    _counter_name: Callable[[], str]
    _layer: Callable[[QComboBox, str], Any]

    def _build_click(self) -> QPushButton:
        self.click_button = QPushButton("Where to click next")
        self.click_button.setToolTip(
            "Where the counter is least sure on the 'Count on' image: its 8 flipped and turned "
            "readings compared; the top 10 places are numbered."
        )
        self.click_button.clicked.connect(self.where_to_click)
        return self.click_button

    def _known_inputs(self, layer: Image, shape: tuple[int, ...]) -> dict[str, Any]:
        """The training points and background when ``layer`` is the training image."""
        if layer.name != self.image_combo.currentText():
            return {"points": None, "background": None}
        points = None
        if self.points_combo.currentText() in self.viewer.layers:
            points = points_yx(self.viewer.layers[self.points_combo.currentText()], layer)
        chosen = self.background_combo.currentText()
        background = None
        if chosen not in ("", NONE) and chosen in self.viewer.layers:
            background = mask_of(self.viewer.layers[chosen], shape[:2])
        return {"points": points, "background": background}

    @when_idle
    def where_to_click(self) -> None:
        """Show where the chosen counter's views of the chosen image disagree."""
        name = self._counter_name()
        layer = self._layer(self.count_image_combo, "an image to count")
        image = image_2d(layer)
        kwargs = {
            "name": name,
            "device": self.device_combo.currentText(),
            "image": image,
            **self._known_inputs(layer, image.shape),
        }
        self.runner.run_in_worker(
            "where_to_click",
            kwargs,
            lambda result: self._show_click_places(layer, result),
            f"Comparing 8 views of {layer.name}",
        )

    def _show_click_places(self, layer: Image, result: Any) -> None:
        top = result.places[:TOP_PLACES]
        names = (WHERE_CLICK.format(layer.name), CLICK_PLACES.format(layer.name))
        limits = (0.0, max(float(result.map.max()), 1e-6))
        places = [[p.y, p.x] for p in top]
        show_places(self.viewer, result.map, places, names, layer, limits, {WHERE_KEY: True})
        if not top:
            self.status.setText(
                f"The counter found no cell in '{layer.name}' that is not already given: "
                "no place to suggest. Count it and click the cells it misses."
            )
            return
        split = sum(place.views < 8 for place in result.places)
        self.status.setText(
            f"{len(result.places)} cell(s) the counter found in '{layer.name}' without a "
            f"point ({split} found by only some of its 8 views); the top {len(top)} are "
            "numbered, least sure first. Click a point on each that is a cell, paint "
            "background on each that is not, and train again."
        )
