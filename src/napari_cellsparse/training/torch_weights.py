"""Saving and loading a PyTorch network's weights in a model folder (U-Net, Cellpose).

Weights are written to a temporary file and renamed, and read with ``weights_only=True``;
a missing, damaged or mismatched file becomes a :class:`WeightsError` naming it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._lazy import import_torch
from ..errors import WeightsError

__all__ = ["load_state", "save_state"]


def save_state(net: Any, folder: Path, filename: str) -> None:
    """Write ``net``'s state_dict to ``folder/filename`` atomically."""
    torch = import_torch()
    fd, tmp = tempfile.mkstemp(prefix=filename, suffix=".part", dir=folder)
    os.close(fd)
    try:
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, Path(folder) / filename)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_state(folder: Path, filename: str, architecture: Callable[[], Any], device: str) -> Any:
    """A network from ``architecture()`` with the weights of ``folder/filename``, on ``device``."""
    torch = import_torch()
    path = Path(folder) / filename
    if not path.is_file():
        raise WeightsError(f"The model folder {folder} has no weights file {filename}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = architecture()
        net.load_state_dict(state)
    except Exception as err:
        raise WeightsError(
            f"{path} is damaged or belongs to another network and cannot be loaded ({err})."
        ) from err
    return net.to(device)
