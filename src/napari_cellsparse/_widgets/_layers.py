"""Small helpers the dock widgets share for reading napari layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["layer_data", "refill_combo"]


def layer_data(layer: Any) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale image)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def refill_combo(combo: Any, names: Sequence[str], best: str | None = None) -> None:
    """Replace a combo box's items, keeping its choice (else ``best``) and sending no signal."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(names))
    if current in names:
        combo.setCurrentText(current)
    elif best:
        combo.setCurrentText(best)
    combo.blockSignals(False)
