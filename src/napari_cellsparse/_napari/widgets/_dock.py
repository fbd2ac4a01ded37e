"""The skeleton every dock widget shares: viewer, state, status line, job runner, life.

A widget subclasses :class:`DockWidget` and brings only its own controls: ``_build()`` lays
them out (and places ``self.status``), ``busy_buttons()`` are disabled while a job runs,
``stop_button`` (or None) cancels it, ``_refresh_layers()`` refills its layer choices when
layers come, go or are renamed (a combo box that showed a renamed layer shows its new name).
Model jobs go to the worker process with ``self.runner.run_in_worker``; errors become one
message with ``self.runner.report``. When the widget closes, is taken out of its dock
(napari's x) or is destroyed with the viewer's window, its job is stopped and it leaves the
shared model worker (the last one to leave ends the process).

What a user starts (a button's method) is decorated with :func:`guarded`: the
:class:`~napari_cellsparse.core.errors.CellsparseError` it raises (a missing layer, a bad
setting) becomes the one message of ``self.runner.report`` (status line and notification).
:func:`when_idle` also refuses, in the status line, while the widget's job runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QComboBox, QLabel, QPushButton, QWidget

from ...core.errors import CellsparseError
from ..warmup import warm_napari
from ._worker import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["DockWidget", "guarded", "when_idle"]

R = TypeVar("R")


def guarded(method: Callable[..., R]) -> Callable[..., R | None]:
    """A user action whose refusal (a :class:`CellsparseError`) is reported, not raised.

    The wrapper takes keyword options only: Qt hands a slot with positional parameters the
    button's ``checked`` flag, so ``clicked.connect(widget.action)`` calls it with none."""

    @functools.wraps(method)
    def run(self: DockWidget, **options: Any) -> R | None:
        try:
            return method(self, **options)
        except CellsparseError as err:
            self.runner.report(err)
            return None

    return run


def when_idle(method: Callable[..., R]) -> Callable[..., R | None]:
    """A :func:`guarded` action that only says ``busy_text`` while the widget's job runs."""

    def idle(self: DockWidget, **options: Any) -> R | None:
        if self.runner.busy:
            self.status.setText(self.busy_text)
            return None
        return method(self, **options)

    return guarded(functools.wraps(method)(idle))


class DockWidget(QWidget):
    """Base of the plugin's dock widgets (see the module docstring)."""

    hint = ""  # the status line's first text: what to do first
    busy_text = "Still working; press Stop or wait."  # a user action while a job runs
    stop_button: QPushButton | None = None

    def __init__(self, napari_viewer: napari.Viewer, state: Any) -> None:
        super().__init__()
        warm_napari()  # napari's Shapes code compiles off the event loop, not at first use
        self.viewer = napari_viewer
        self.state = state
        self.status = QLabel(self.hint)
        self.status.setWordWrap(True)
        self._build()
        self.runner = JobRunner(self.busy_buttons(), self.stop_button, self.status.setText)
        self._left = False
        self._docked = False  # it has been in a dock (napari's x takes it out of there)
        self._watched: list[Any] = []  # layers a running training learns from
        self._changed = False  # they changed since the worker last pulled them
        self._layer_events = (self.viewer.layers.events.inserted, self.viewer.layers.events.removed)
        for event in self._layer_events:
            event.connect(self._refresh_layers)
        self._names: dict[str, str] = {}  # unique id of a layer -> its name, to follow renames
        self.viewer.layers.events.inserted.connect(self._follow_names)
        self.destroyed.connect(self.runner.close)
        self._follow_names()
        self._refresh_layers()

    def _build(self) -> None:
        raise NotImplementedError

    def busy_buttons(self) -> list[QWidget]:
        """The buttons that start jobs (disabled while one runs)."""
        return []

    def _refresh_layers(self, _event: Any = None) -> None:
        """Refill the layer choices (layers were added, removed or renamed)."""

    def follow_choice(self, source: QComboBox, target: QComboBox) -> None:
        """``target`` takes what is chosen in ``source`` until a person picks in ``target``
        itself: the image to predict on or count follows the training image."""
        picked: list[str] = []  # what the person picked in ``target``; the rule ends there
        target.textActivated.connect(picked.append)

        def follow(text: str) -> None:
            if not picked and target.findText(text) >= 0:
                target.setCurrentText(text)

        source.currentTextChanged.connect(follow)

    def _follow_names(self, _event: Any = None) -> None:
        """Watch every layer's name (napari's layer list says nothing of a rename)."""
        for layer in self.viewer.layers:
            if layer.unique_id not in self._names:
                layer.events.name.connect(self._renamed)
            self._names[layer.unique_id] = layer.name

    def _renamed(self, event: Any) -> None:
        """Refill the layer choices; a combo box that showed the old name shows the new one
        (a person who renames the chosen annotation keeps it chosen)."""
        layer = event.source
        old, new = self._names.get(layer.unique_id), layer.name
        self._names[layer.unique_id] = new
        showing = [c for c in self.findChildren(QComboBox) if old and c.currentText() == old]
        self._refresh_layers()
        for combo in showing:
            if combo.findText(new) >= 0:
                combo.blockSignals(True)
                combo.setCurrentText(new)
                combo.blockSignals(False)

    # -- layers a running training follows ----------------------------------------------
    def watch(self, layers: list[Any]) -> None:
        """Follow ``layers`` (edits: ``paint``; replaced data: ``data``) until the next call:
        what changes while a training runs is sent to it at its next pull."""
        for layer in self._watched:
            for event in self._edit_events(layer):
                event.disconnect(self._mark_changed)
        self._watched, self._changed = list(layers), False
        for layer in self._watched:
            for event in self._edit_events(layer):
                event.connect(self._mark_changed)

    @staticmethod
    def _edit_events(layer: Any) -> list[Any]:
        return [getattr(layer.events, n) for n in ("paint", "data") if hasattr(layer.events, n)]

    def _mark_changed(self, _event: Any = None) -> None:
        self._changed = True

    def take_change(self) -> bool:
        """Whether the watched layers changed since the last call (then read them again)."""
        changed, self._changed = self._changed, False
        return changed

    # -- life ------------------------------------------------------------------------
    def event(self, event: QEvent) -> bool:
        """A widget taken out of its dock (napari's x on the dock's title bar) is closed:
        napari only unparents it, so without this its job would go on unseen."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.leave()
        return super().event(event)

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
        self.viewer.layers.events.inserted.disconnect(self._follow_names)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self._renamed)
