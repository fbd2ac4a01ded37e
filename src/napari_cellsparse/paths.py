"""Where the product keeps its files: one user data folder, overridable for tests."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "data_home"]

HOME_ENV = "NAPARI_CELLSPARSE_HOME"


def data_home() -> Path:
    """The user data folder (platformdirs), or ``$NAPARI_CELLSPARSE_HOME`` when set."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-cellsparse", appauthor=False))
