"""Form fields the dock widgets share."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

__all__ = ["folder_row"]


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
