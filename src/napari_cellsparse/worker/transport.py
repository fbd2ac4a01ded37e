"""Large arrays cross the process boundary as memory-mapped ``.npy`` files, not pickles.

Both sides share one scratch folder per worker process (on ``/dev/shm`` where it exists, so
the files live in memory). :func:`pack` replaces every array of ``MIN_BYTES`` or more inside a
message (nested in dicts, lists and tuples) by an :class:`ArrayRef` to a file it writes;
:func:`unpack` maps each file back. The receiver owns a file once it has read it: arguments
are mapped copy-on-write (no copy unless written to) and removed by the sender when the job
ends; results are copied out and removed at once. The folder itself is removed by whichever
process outlives the other.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MIN_BYTES", "ArrayRef", "make_scratch", "pack", "remove_scratch", "unpack"]

MIN_BYTES = 256 * 1024  # smaller arrays travel inside the pickled message
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class ArrayRef:
    """An array written to ``path`` (a ``.npy`` file in the scratch folder)."""

    path: str
    shape: tuple[int, ...]
    dtype: str


def make_scratch() -> Path:
    """A new private scratch folder, in memory (``/dev/shm``) when the system has one."""
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="cellsparse-worker-", dir=base))


def remove_scratch(folder: Path | None) -> None:
    """Remove a scratch folder and everything left in it (never raises)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def pack(obj: Any, folder: Path, written: list[Path] | None = None) -> Any:
    """``obj`` with its large arrays written to ``folder`` and replaced by references.

    Paths of the files written are appended to ``written`` (so the sender can remove them).
    """
    if isinstance(obj, np.ndarray) and obj.dtype != object and obj.nbytes >= MIN_BYTES:
        path = folder / f"{uuid.uuid4().hex}.npy"
        target = np.lib.format.open_memmap(path, mode="w+", dtype=obj.dtype, shape=obj.shape)
        target[...] = obj
        target.flush()
        del target
        if written is not None:
            written.append(path)
        return ArrayRef(str(path), tuple(obj.shape), obj.dtype.str)
    return _map(obj, lambda value: pack(value, folder, written))


def unpack(obj: Any, own: bool = False) -> Any:
    """``obj`` with every :class:`ArrayRef` read back.

    ``own=False`` (arguments): a copy-on-write map of the sender's file. ``own=True``
    (results): an ordinary array, and the file is removed.
    """
    if isinstance(obj, ArrayRef):
        if not own:
            return np.load(obj.path, mmap_mode="c")
        mapped = np.load(obj.path, mmap_mode="r")
        array = np.array(mapped, copy=True)
        del mapped
        Path(obj.path).unlink(missing_ok=True)
        return array
    return _map(obj, lambda value: unpack(value, own))


def _map(obj: Any, fn: Any) -> Any:
    """``obj`` with ``fn`` applied to the items of dicts, lists, tuples and the fields of
    dataclass instances (results such as counting's ``CountResult``); other objects as is."""
    if isinstance(obj, dict):
        return {key: fn(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(fn(value) for value in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: fn(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj
