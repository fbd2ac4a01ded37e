"""Small helpers the dock widgets share for reading napari layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["compact_labels", "layer_data", "refill_combo"]


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


def compact_labels(labels: Any) -> Any:
    """A label array in the smallest unsigned type that holds it: napari draws those faster
    (less main-thread work when a layer is shown). Other arrays (zarr, dask) as they are."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        return labels
    top = int(labels.max()) if labels.size else 0
    if top >= 2**16 or int(labels.min(initial=0)) < 0:
        return labels
    return labels.astype(np.uint8 if top < 2**8 else np.uint16)
