"""The skeleton every dock widget shares: viewer, state, status line, job runner, life.

A widget subclasses :class:`DockWidget` and brings only its own controls: ``_build()`` lays
them out (and places ``self.status``), ``busy_buttons()`` are disabled while a job runs,
``stop_button`` (or None) cancels it, ``_refresh_layers()`` refills its layer choices when
layers come and go. Model jobs go to the worker process with ``self.runner.run_in_worker``;
errors become one message with ``self.runner.report``. When the widget closes, or is destroyed
with the viewer's window, its job is stopped and it leaves the shared model worker (the last
one to leave ends the process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QLabel, QPushButton, QWidget

from ._worker import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["DockWidget"]


class DockWidget(QWidget):
    """Base of the plugin's dock widgets (see the module docstring)."""

    hint = ""  # the status line's first text: what to do first
    stop_button: QPushButton | None = None

    def __init__(self, napari_viewer: napari.Viewer, state: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = state
        self.status = QLabel(self.hint)
        self.status.setWordWrap(True)
        self._build()
        self.runner = JobRunner(self.busy_buttons(), self.stop_button, self.status.setText)
        self._left = False
        self._layer_events = (self.viewer.layers.events.inserted, self.viewer.layers.events.removed)
        for event in self._layer_events:
            event.connect(self._refresh_layers)
        self.destroyed.connect(self.runner.close)
        self._refresh_layers()

    def _build(self) -> None:
        raise NotImplementedError

    def busy_buttons(self) -> list[QWidget]:
        """The buttons that start jobs (disabled while one runs)."""
        return []

    def _refresh_layers(self, _event: Any = None) -> None:
        """Refill the layer choices (layers were added or removed)."""

    # -- life ------------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:
        self.leave()
        super().closeEvent(event)

    def leave(self) -> None:
        """Stop this widget's job and leave the model worker (window or widget closed)."""
        if self._left:
            return
        self._left = True
        self.runner.close()
        for layer_event in self._layer_events:
            layer_event.disconnect(self._refresh_layers)
