"""Form fields the dock widgets share."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...training import model_names, newest_model
from ._layers import refill_combo

__all__ = ["NONE", "folder_row", "model_row", "refill_models", "training_controls"]

NONE = "(none)"  # the choice of no layer in an optional layer list


def folder_row(edit: QLineEdit, parent: QWidget, title: str) -> QHBoxLayout:
    """A path field with a Browse… button that picks a folder (starting at the field's)."""
    browse = QPushButton("Browse…")

    def pick() -> None:
        chosen = QFileDialog.getExistingDirectory(parent, title, edit.text())
        if chosen:
            edit.setText(chosen)

    browse.clicked.connect(pick)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(browse)
    return row


def model_row(combo: QComboBox, refresh: Callable[[], object]) -> QHBoxLayout:
    """A model list with a ↻ button that looks for newly trained models."""
    button = QPushButton("↻")
    button.setMaximumWidth(30)
    button.setToolTip("Look for newly trained models")
    button.clicked.connect(lambda: refresh())
    row = QHBoxLayout()
    row.addWidget(combo, 1)
    row.addWidget(button)
    return row


def refill_models(combo: QComboBox, backends: Collection[str], select: str | None = None) -> None:
    """Fill a model list with the store's models of ``backends``; the model saved last is
    the default (the one a person trained last, not the first by name)."""
    names = model_names(backends)
    refill_combo(combo, names, newest_model(names), select=select)


def training_controls(widget: Any, stop_tip: str) -> QVBoxLayout:
    """Train, Stop and Reset in a row over a progress bar: the controls both training widgets
    share, made as ``widget``'s ``train_button`` (calls ``widget.train``), ``stop_button``
    (its tool tip ``stop_tip``), ``reset_button`` (calls ``widget.reset``) and
    ``progress_bar``."""
    widget.train_button = QPushButton("Train")
    widget.train_button.clicked.connect(widget.train)
    widget.stop_button = QPushButton("Stop")
    widget.stop_button.setToolTip(stop_tip)
    widget.reset_button = QPushButton("Reset")
    widget.reset_button.setToolTip("The next training starts from scratch.")
    widget.reset_button.clicked.connect(widget.reset)
    row = QHBoxLayout()
    for button in (widget.train_button, widget.stop_button, widget.reset_button):
        row.addWidget(button)
    widget.progress_bar = QProgressBar()
    widget.progress_bar.setRange(0, 1)
    widget.progress_bar.setValue(0)
    controls = QVBoxLayout()
    controls.addLayout(row)
    controls.addWidget(widget.progress_bar)
    return controls
