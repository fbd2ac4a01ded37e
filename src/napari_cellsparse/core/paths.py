"""Where the product keeps its files: one user data folder, overridable for tests."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["HOME_ENV", "atomic_target", "data_home"]

HOME_ENV = "NAPARI_CELLSPARSE_HOME"


def data_home() -> Path:
    """The user data folder (platformdirs), or ``$NAPARI_CELLSPARSE_HOME`` when set."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-cellsparse", appauthor=False))


@contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary name next to ``path`` to write a file (or folder) to; renamed to ``path``
    when the block ends, removed if it fails. So a file that exists is complete, and an
    interrupted write never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield temp
        if path.is_dir() and temp.is_dir():
            shutil.rmtree(path)
        os.replace(temp, path)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp)
        else:
            temp.unlink(missing_ok=True)
