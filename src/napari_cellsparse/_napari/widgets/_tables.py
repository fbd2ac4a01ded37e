"""Measurement tables in the viewer: a Labels layer's features, and a table saved by a dialog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QLabel, QWidget

from ...core.errors import BadInputError, CellsparseError
from ...formats.tables import write_table

__all__ = ["save_table_as", "show_table"]


def show_table(layer: Any, table: Any) -> None:
    """Make ``table`` the Labels layer's features: napari finds a label's row through the
    ``index`` column (the label value), so the cursor shows that cell's values."""
    layer.features = table.assign(index=table["Object ID"])


def save_table_as(
    parent: QWidget,
    table: Any,
    suggested: str,
    path: str | Path | None,
    report: Callable[[Exception], None],
    status: QLabel,
    nothing_yet: str,
) -> Path | None:
    """Write ``table`` as .csv or .tsv to ``path``, or where the user says; the outcome goes
    to the widget's ``status`` line, errors (and ``nothing_yet`` when there is no table) to
    ``report``. None when nothing was written."""
    if table is None:
        report(BadInputError(nothing_yet))
        return None
    if path is None:
        path, _ = QFileDialog.getSaveFileName(
            parent, "Save measurements", suggested, "Tables (*.csv *.tsv)"
        )
        if not path:
            return None
    try:
        written = write_table(table, path)
    except CellsparseError as err:
        report(err)
        return None
    status.setText(f"Saved {len(table)} row(s) to {written}.")
    return written
