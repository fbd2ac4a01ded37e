"""Registered SAM weights (fine-tuned checkpoints): ``registered.json`` in the weights cache.

The server registers weights it downloaded (``POST /sam/weights/``) and ``cellsparse weights
add FILE`` registers a local file, possibly while the server runs; so the list is changed
only under a cross-process file lock (read, check, write) and written atomically (a
temporary file renamed over the old one), and readers never see half a file. Each
registered checkpoint gets its own file name, so two registrations never share a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.errors import BadInputError, WeightsError
from .weights import _checkpoint, weights_dir

__all__ = [
    "LOCK_TIMEOUT_S",
    "REGISTRY",
    "add_local_weights",
    "checkpoint_file",
    "read_entries",
    "register_entry",
    "registry_path",
    "safe_name",
]

log = logging.getLogger(__name__)

REGISTRY = "registered.json"
LOCK_TIMEOUT_S = 60.0  # waiting for another process's registration
MAX_NAME = 100


def registry_path() -> Path:
    """``registered.json`` in the weights cache."""
    return weights_dir() / REGISTRY


def safe_name(name: str) -> str:
    """``name`` as a file name stem (letters, digits, ``-_.``), or :class:`BadInputError`."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    if not cleaned:
        raise BadInputError(f"{name!r} cannot be used as a weights name.")
    return cleaned[:MAX_NAME]


def checkpoint_file(model_type: str, name: str) -> Path:
    """A new file for registered weights named ``name`` (a random suffix keeps it unique)."""
    return weights_dir() / model_type / f"{safe_name(name)}-{secrets.token_hex(4)}.pth"


def read_entries() -> list[dict[str, str]]:
    """Registered weights whose file is still there (an unreadable list reads as empty)."""
    return [e for e in _read_all() if Path(e.get("path", "")).is_file()]


def _read_all() -> list[dict[str, str]]:
    path = registry_path()
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict)]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """The cross-process lock of ``registered.json`` (a ``.lock`` file beside it)."""
    from filelock import FileLock, Timeout

    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(folder / f"{REGISTRY}.lock", timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout as err:
        raise WeightsError(
            f"Another process has held the lock of {registry_path()} for {LOCK_TIMEOUT_S:.0f} s; "
            "try again, or remove the .lock file if no cellsparse process is running."
        ) from err


def _write(entries: list[dict[str, str]]) -> None:
    path = registry_path()
    fd, tmp = tempfile.mkstemp(prefix=f".{REGISTRY}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(entries, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def register_entry(model_type: str, name: str, url: str, path: Path) -> bool:
    """Add an entry under the lock; False (and nothing written) when the model type already
    has weights of that name or URL."""
    with _locked():
        entries = read_entries()
        if any(e["type"] == model_type and (e["name"] == name or e["url"] == url) for e in entries):
            return False
        entry = {"type": model_type, "name": name, "url": url, "path": str(path)}
        _write([*entries, entry])
    log.info("registered %s weights %r (%s) at %s", model_type, name, url, path)
    return True


def add_local_weights(
    model_type: str,
    source: str | os.PathLike,
    name: str | None = None,
    check: Callable[[Path], object] | None = None,
) -> tuple[str, Path]:
    """Copy a local checkpoint into the cache and register it (``cellsparse weights add``).

    ``check`` (by default: loading it into a ``model_type`` model) runs on the source first;
    the copy goes to a temporary file renamed into place. Returns the entry's ``(url, path)``;
    the URL is the source's ``file:`` URI, what a client names as ``checkpoint_url``.
    """
    _checkpoint(model_type)
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise BadInputError(f"The weights file {source} does not exist or is not a file.")
    name = name or source.stem
    safe_name(name)
    url = source.as_uri()
    if check is None:
        from .models import load_sam

        load_sam(model_type, source, "cpu")
    else:
        check(source)
    target = checkpoint_file(model_type, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if not register_entry(model_type, name, url, target):
        target.unlink(missing_ok=True)
        raise BadInputError(
            f"{model_type} weights named {name!r} or from {url} are already registered; "
            "choose another --name."
        )
    return url, target
