"""Torch weights of every trainable model here: written atomically, read back safely.

Weights are written to a temporary file and renamed, and read with ``weights_only=True``;
a missing, damaged or mismatched file becomes a :class:`WeightsError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import WeightsError
from ..core.lazy import import_torch
from ..core.paths import atomic_target

__all__ = ["load_state", "save_state", "state_finite"]


def save_state(net: Any, folder: Path, filename: str) -> None:
    """Write ``net``'s state_dict to ``folder/filename`` atomically."""
    torch = import_torch()
    with atomic_target(Path(folder) / filename) as temp:
        torch.save(net.state_dict(), temp)


def state_finite(net: Any) -> bool:
    """Whether every floating-point tensor of ``net``'s state is finite (no NaN or inf)."""
    torch = import_torch()
    return all(
        bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()
    )


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
