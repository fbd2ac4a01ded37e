"""The model store: one folder per model under the user data folder.

A model folder holds the backend's weight files, ``config.json`` (everything needed to rebuild
the network and post-process its output) and ``metadata.json`` (backend, dates, the images and
steps it was trained on, package versions). ``metadata.json`` is written last, so a folder
without it is an unfinished save. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import BadInputError, WeightsError
from ..paths import atomic_target, data_home

__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "list_models",
    "model_folder",
    "models_dir",
    "now",
    "read_json",
    "resolve_model_folder",
    "save_training",
    "write_json",
]

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
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


def save_training(
    folder: Path,
    meta: dict[str, Any],
    session: dict[str, Any],
    config: dict[str, Any],
    save_weights: Callable[[Path], None],
    **fields: Any,
) -> dict[str, Any]:
    """Record a training session in ``meta`` and write the model folder.

    ``meta`` gets ``fields``, the running step total, the package versions and ``session``
    appended to its sessions. The metadata file is removed first and written last, so a
    folder whose metadata exists holds matching weights and config.
    """
    meta.update(
        fields,
        updated=session["date"],
        steps=int(meta.get("steps", 0)) + int(session["steps"]),
        versions=_versions(),
    )
    meta["sessions"] = [*meta.get("sessions", []), session]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).unlink(missing_ok=True)
    save_weights(folder)
    write_json(folder / CONFIG_FILE, config)
    write_json(folder / METADATA_FILE, meta)
    return meta


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
            meta = read_json(folder / METADATA_FILE)
        except WeightsError as err:
            meta = {"error": str(err)}
        found.append({"name": folder.name, **meta, "path": str(folder)})
    return found


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars, tuples and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
