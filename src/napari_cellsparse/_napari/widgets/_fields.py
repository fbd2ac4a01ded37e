"""Form fields the dock widgets share."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

__all__ = ["folder_row", "model_row"]


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
