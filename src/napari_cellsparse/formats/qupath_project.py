"""A QuPath project of a batch: every image as an entry, its objects as GeoJSON, and a script
that imports them (Run for project), so a reviewer opens the whole batch in QuPath.

The project file follows QuPath **v0.6.0** (unchanged in v0.7.0), as written by
``DefaultProject.writeProject`` (qupath-core ``qupath/lib/projects/DefaultProject.java``):
top-level ``version``, ``createTimestamp`` and ``modifyTimestamp`` (ms since the epoch),
``uri`` (of the project file), ``lastID`` and ``images``; each entry the fields of
``DefaultProjectImageEntry`` (``serverBuilder``, ``entryID``, ``randomizedName``,
``imageName``, ``metadata``, ``tags``), its ``serverBuilder`` a ``DefaultImageServerBuilder``
as ``ImageServers`` serialises it (``builderType: "uri"``, ``providerClassName``, ``uri``,
``args``). URIs are spelled as Java's ``File.toURI()`` does (``file:/C:/a%20b/x.tif``). The
builder's optional ``metadata`` is left out, so QuPath reads width, channels and pixel size
from the image itself rather than from us.

Layout of the folder: ``project.qpproj``, ``objects/<image>.geojson`` (the batch's
features with their measurements, :mod:`napari_cellsparse.formats.geojson`) and
``scripts/import_cellsparse_objects.groovy``; each entry's metadata names its GeoJSON file
(key ``cellsparse.geojson``, relative to the project). The folder appears only once complete,
and is refused when it holds anything else (e.g. QuPath's ``data/`` after a review).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.errors import BadInputError
from ..core.paths import atomic_target
from .geojson import read_features, write_features
from .image_sources import image_stem

__all__ = [
    "QUPATH_VERSION",
    "ProjectImage",
    "batch_project_images",
    "check_project_folder",
    "java_file_uri",
    "write_batch_project",
    "write_qupath_project",
]

QUPATH_VERSION = "0.6.0"
PROJECT_FILE = "project.qpproj"
OBJECTS_DIR = "objects"
SCRIPTS_DIR = "scripts"
SCRIPT_FILE = "import_cellsparse_objects.groovy"
OUR_NAMES = frozenset({PROJECT_FILE, OBJECTS_DIR, SCRIPTS_DIR})
GEOJSON_KEY = "cellsparse.geojson"
OBJECTS_KEY = "cellsparse.objects"
LABELS_KEY = "cellsparse.labels"
BIOFORMATS = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
IMAGEJ = "qupath.imagej.images.servers.ImageJServerBuilder"
IMAGEJ_SUFFIXES = (".png", ".jpg", ".jpeg")
URI_SAFE = "/:@!$&'()*+,;=~"  # what java.net.URI leaves unquoted in a path

IMPORT_SCRIPT = """\
/*
 * Written by napari-cellsparse: import the objects it found in this image.
 * In QuPath: Automate > Script editor, open this file, then Run > Run for project.
 * The GeoJSON file of each image is named in its metadata ('{key}', relative to the
 * project folder). The image's detections are replaced, so running it twice is harmless.
 */
import qupath.lib.io.PathIO

def entry = getProjectEntry()
def relative = entry?.getMetadataValue('{key}')
if (relative == null) {{
    println "No napari-cellsparse objects for ${{entry?.getImageName()}}"
    return
}}
def file = new File(buildFilePath(PROJECT_BASE_DIR, relative))
def objects = PathIO.readObjects(file)
removeObjects(getDetectionObjects(), true)
addObjects(objects)
println "${{entry.getImageName()}}: imported ${{objects.size()}} objects from ${{relative}}"
"""


@dataclass(frozen=True)
class ProjectImage:
    """One image of the project and the GeoJSON of its objects."""

    image: Path
    geojson: Path
    labels: Path | None = None


def java_file_uri(path: str | os.PathLike[str]) -> str:
    """``path`` (made absolute) as Java's ``File.toURI()`` spells it: ``file:/abs/path``,
    reserved and non-ASCII characters percent-encoded (UTF-8), Windows drives ``file:/C:/``."""
    posix = Path(path).absolute().as_posix()
    if not posix.startswith("/"):
        posix = "/" + posix
    return "file:" + quote(posix, safe=URI_SAFE)


def check_project_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` if a project may be written there: new, empty, or one this module wrote
    (nothing but its own files); otherwise :class:`BadInputError`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"The QuPath project folder {folder} is a file.")
    if folder.is_dir():
        names = {p.name for p in folder.iterdir()}
        if names and (not names <= OUR_NAMES or PROJECT_FILE not in names):
            raise BadInputError(
                f"The QuPath project folder {folder} is not empty and not a project written "
                f"by napari-cellsparse (it holds {', '.join(sorted(names)[:5])}); "
                "choose a new or empty folder."
            )
    return folder


def _provider(image: Path) -> str | None:
    name = image.name.lower()
    if name.endswith(".zarr"):
        return None  # QuPath then asks every installed reader
    return IMAGEJ if name.endswith(IMAGEJ_SUFFIXES) else BIOFORMATS


def _entry(entry_id: int, image: ProjectImage, geojson: str, n_objects: int) -> dict[str, Any]:
    builder: dict[str, Any] = {"builderType": "uri"}
    provider = _provider(image.image)
    if provider is not None:
        builder["providerClassName"] = provider
    builder["uri"] = java_file_uri(image.image)
    builder["args"] = ["--series", "0"] if provider == BIOFORMATS else []
    metadata = {GEOJSON_KEY: geojson, OBJECTS_KEY: str(n_objects)}
    if image.labels is not None:
        metadata[LABELS_KEY] = java_file_uri(image.labels)
    return {
        "serverBuilder": builder,
        "entryID": entry_id,
        "randomizedName": str(uuid.uuid4()),
        "imageName": image.image.name,
        "metadata": metadata,
        "tags": [],
    }


def _geojson_name(image: Path, used: set[str]) -> str:
    stem = image_stem(image)
    name, k = f"{stem}.geojson", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.geojson"
    used.add(name)
    return name


def write_qupath_project(folder: str | os.PathLike[str], images: Sequence[ProjectImage]) -> Path:
    """Write the project of ``images`` into ``folder`` (atomically); returns the
    ``project.qpproj`` path."""
    folder = check_project_folder(folder)
    if not images:
        raise BadInputError("No images with results to put in a QuPath project.")
    for image in images:
        if not image.image.exists() or not image.geojson.is_file():
            raise BadInputError(f"{image.image.name}: the image or its GeoJSON is missing.")
    now = int(time.time() * 1000)
    final = folder.absolute() / PROJECT_FILE
    try:
        with atomic_target(folder) as temp:
            (temp / OBJECTS_DIR).mkdir(parents=True)
            (temp / SCRIPTS_DIR).mkdir()
            entries, used = [], set()
            for entry_id, image in enumerate(images, start=1):
                features = read_features(image.geojson)
                relative = f"{OBJECTS_DIR}/{_geojson_name(image.image, used)}"
                write_features(temp / relative, features)
                entries.append(_entry(entry_id, image, relative, len(features)))
            project = {
                "version": QUPATH_VERSION,
                "createTimestamp": now,
                "modifyTimestamp": now,
                "uri": java_file_uri(final),
                "lastID": len(entries),
                "images": entries,
            }
            (temp / PROJECT_FILE).write_text(json.dumps(project, indent=2), encoding="utf-8")
            (temp / SCRIPTS_DIR / SCRIPT_FILE).write_text(
                IMPORT_SCRIPT.format(key=GEOJSON_KEY), encoding="utf-8"
            )
    except OSError as err:
        raise BadInputError(f"Cannot write the QuPath project to {folder}: {err}") from err
    return final


def batch_project_images(
    items: Sequence[Any], summary: Any
) -> tuple[list[ProjectImage], list[str]]:
    """The images of a batch that have results (done or skipped as done before) with their
    GeoJSON, and the names of those left out (failed, or written without GeoJSON)."""
    images, left_out = [], []
    for item, result in zip(items, summary.results, strict=True):
        if result.status in ("done", "skipped") and item.geojson is not None:
            images.append(ProjectImage(Path(item.image), Path(item.geojson), Path(item.labels)))
        else:
            left_out.append(Path(item.image).name)
    return images, left_out


def write_batch_project(
    folder: str | os.PathLike[str], items: Sequence[Any], summary: Any
) -> tuple[Path | None, list[str]]:
    """The QuPath project of a batch's images that have results (None when none has), and
    the names of the images left out."""
    images, left_out = batch_project_images(items, summary)
    return (write_qupath_project(folder, images) if images else None), left_out
