"""Measurement tables in the viewer: a Labels layer's features, and a table saved by a dialog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QWidget

from ..measure import write_table

__all__ = ["save_table_as", "show_table"]


def show_table(layer: Any, table: Any) -> None:
    """Make ``table`` the Labels layer's features: napari finds a label's row through the
    ``index`` column (the label value), so the cursor shows that cell's values."""
    layer.features = table.assign(index=table["Object ID"])


def save_table_as(
    parent: QWidget, table: Any, suggested: str, path: str | Path | None = None
) -> Path | None:
    """Write ``table`` as .csv or .tsv to ``path``, or where the user says (None: cancelled)."""
    if path is None:
        path, _ = QFileDialog.getSaveFileName(
            parent, "Save measurements", suggested, "Tables (*.csv *.tsv)"
        )
        if not path:
            return None
    return write_table(table, path)
