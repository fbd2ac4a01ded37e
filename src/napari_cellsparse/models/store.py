"""The model store: one folder per model under the user data folder, one sub-folder per version.

A version holds the backend's weight files, ``config.json`` (everything needed to rebuild the
network and post-process its output) and ``metadata.json`` (backend, dates, the images and
steps it was trained on, package versions). A save writes a complete new version into
``versions/NNNN.partial``, renames it to ``versions/NNNN`` and only then switches the pointer
``current.json`` to it (temporary file + rename), so a failed or killed save never touches the
version that loads; the last two versions are kept. Models saved before versions existed (the
files directly in the model folder) load as they are, and count as the previous version of
their first versioned save. Every reader finds the files with :func:`current_folder`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Collection, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError, WeightsError
from ..core.paths import atomic_target, data_home

__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "POINTER_FILE",
    "VERSIONS_DIR",
    "current_folder",
    "has_version",
    "list_models",
    "model_folder",
    "model_names",
    "models_dir",
    "newest_model",
    "now",
    "read_json",
    "resolve_model_folder",
    "save_training",
    "write_json",
]

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
POINTER_FILE = "current.json"
VERSIONS_DIR = "versions"
PARTIAL = ".partial"
KEEP_VERSIONS = 2
_VERSION = re.compile(r"^(\d{4,})(\.partial)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def models_dir() -> Path:
    """Where models live: ``<data home>/models``."""
    return data_home() / "models"


def model_folder(name: str) -> Path:
    """The folder of the model called ``name`` (checked to be a safe folder name)."""
    if not _NAME.match(name or "") or name.strip() != name or ".." in name:
        raise BadInputError(
            f"{name!r} cannot be a model name: use letters, digits, spaces, '.', '-' or '_' "
            "(at most 100 characters, no leading or trailing space)."
        )
    return models_dir() / name


def resolve_model_folder(name_or_path: str | os.PathLike[str]) -> Path:
    """A model folder from a store name or a path to a folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    folder = model_folder(str(name_or_path))
    if not folder.is_dir():
        known = ", ".join(m["name"] for m in list_models() if "error" not in m) or "none yet"
        raise BadInputError(
            f"No model called {str(name_or_path)!r} in {models_dir()} (models: {known})."
        )
    return folder


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_jsonable)
    with atomic_target(path) as temp:
        temp.write_text(text, encoding="utf-8")


def now() -> str:
    """The current UTC time as an ISO string (seconds), as stored in model metadata."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def current_folder(folder: Path) -> Path:
    """The folder holding the current version's weights, ``config.json`` and
    ``metadata.json``: the version ``current.json`` points to, or the model folder itself for
    a model saved before versions existed (or a folder given by path)."""
    folder = Path(folder)
    pointer = folder / POINTER_FILE
    if not pointer.is_file():
        return folder
    name = read_json(pointer).get("version")
    if not isinstance(name, str) or not _VERSION.match(name) or name.endswith(PARTIAL):
        raise WeightsError(f"{pointer} is damaged: it names no model version.")
    current = folder / VERSIONS_DIR / name
    if not current.is_dir():
        raise WeightsError(
            f"{pointer} points to version {name}, which is missing; remove {pointer.name} "
            "to fall back to the files directly in the model folder, or train afresh."
        )
    return current


def has_version(folder: Path) -> bool:
    """Whether the model folder holds a version that loads (its metadata exists)."""
    try:
        return (current_folder(folder) / METADATA_FILE).is_file()
    except WeightsError:
        return False


def save_training(
    folder: Path,
    meta: dict[str, Any],
    session: dict[str, Any],
    config: dict[str, Any],
    save_weights: Callable[[Path], None],
    **fields: Any,
) -> dict[str, Any]:
    """Write a training session as a new version of the model in ``folder``; the new metadata.

    The metadata is ``meta`` with ``fields``, the running step total, the package versions and
    ``session`` appended to its sessions. ``save_weights(version_folder)`` writes the weights.
    When anything fails, the new version is removed and the current one stays as it was; a
    failure to write (disk full, permissions) becomes a :class:`WeightsError` naming it.
    """
    new_meta = {
        **meta,
        **fields,
        "updated": session["date"],
        "steps": int(meta.get("steps", 0)) + int(session["steps"]),
        "versions": _versions(),
        "sessions": [*meta.get("sessions", []), session],
    }
    versions = folder / VERSIONS_DIR
    previous = _current_name(folder)
    name = f"{_next_number(versions):04d}"
    partial = versions / f"{name}{PARTIAL}"
    done = versions / name
    try:
        partial.mkdir(parents=True)
        save_weights(partial)
        write_json(partial / CONFIG_FILE, config)
        write_json(partial / METADATA_FILE, new_meta)
        os.replace(partial, done)
        write_json(folder / POINTER_FILE, {"version": name, "date": session["date"]})
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if _current_name(folder) != name:
            shutil.rmtree(done, ignore_errors=True)
        _remove_if_empty(folder)
        if isinstance(err, OSError):
            raise WeightsError(_save_failed(folder, err)) from err
        raise
    _prune(folder, keep={name, previous})
    return new_meta


def _current_name(folder: Path) -> str | None:
    """The current version's name, ``""`` for files directly in the folder, None for none."""
    try:
        current = current_folder(folder)
    except WeightsError:
        return None
    if current != folder:
        return current.name
    return "" if (folder / METADATA_FILE).is_file() else None


def _next_number(versions: Path) -> int:
    """One more than every version number in use (complete, partial or left over)."""
    found = [int(m.group(1)) for p in _entries(versions) if (m := _VERSION.match(p.name))]
    return max(found, default=0) + 1


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _prune(folder: Path, keep: set[str | None]) -> None:
    """Remove versions other than ``keep`` (older ones, partial saves of killed runs) and the
    files of the one-folder layout once it is no longer the previous version."""
    for entry in _entries(folder / VERSIONS_DIR):
        if entry.name not in keep:
            _remove(entry)
    if "" not in keep:
        for entry in _entries(folder):
            if entry.is_file() and entry.name != POINTER_FILE:
                entry.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    """Remove a model folder left empty by a first save that failed."""
    for path in (folder / VERSIONS_DIR, folder):
        try:
            path.rmdir()
        except OSError:
            return


def _save_failed(folder: Path, err: OSError) -> str:
    """What a biologist reads when a save failed."""
    kept = (
        "The previous version is kept and still loads."
        if has_version(folder)
        else "Nothing was saved."
    )
    hint = " Free some disk space, then train again." if err.errno == errno.ENOSPC else ""
    return f"The model {folder.name!r} could not be saved ({err}). {kept}{hint}"


def _versions() -> dict[str, str]:
    found = {}
    for package in ("napari-cellsparse", "numpy", "torch", "tensorflow", "stardist", "cellpose"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def read_json(path: Path) -> dict[str, Any]:
    """Read one of a model's JSON files, turning absence or damage into a clear error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(
            f"The model folder {path.parent} has no {path.name}; it is incomplete "
            "(train it again, or remove the folder)."
        ) from None
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path} is damaged and cannot be read ({err}).") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is damaged: expected a JSON object.")
    return data


def list_models() -> list[dict[str, Any]]:
    """Metadata of every stored model, sorted by name; damaged folders carry an ``error``."""
    root = models_dir()
    found = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            meta = read_json(current_folder(folder) / METADATA_FILE)
        except WeightsError as err:
            meta = {"error": str(err)}
        found.append({"name": folder.name, **meta, "path": str(folder)})
    return found


def model_names(backends: Collection[str]) -> list[str]:
    """Names of the intact stored models made by one of ``backends`` (a widget's model list:
    segmentation models are no use to the counter, nor counters to Predict)."""
    return [m["name"] for m in list_models() if "error" not in m and m.get("backend") in backends]


def newest_model(names: Sequence[str]) -> str | None:
    """Of the stored models ``names`` (a widget's list, from :func:`model_names`), the one
    saved last: a widget's default choice, the model a person trained last rather than the
    first by name. None when there is none. Reads file times only, not the store again."""
    saved = {}
    for name in names:
        folder = models_dir() / name
        pointer = folder / POINTER_FILE
        try:
            saved[name] = (pointer if pointer.is_file() else folder / METADATA_FILE).stat()
        except OSError:  # removed meanwhile
            continue
    return max(saved, key=lambda name: saved[name].st_mtime_ns) if saved else None


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars, tuples and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
