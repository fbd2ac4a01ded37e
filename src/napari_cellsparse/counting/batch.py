"""Count every image of a folder: ``counts.json``, ``counts.csv`` and one overlay PNG each.

``counts.json`` maps each image path to its count (as CellNet's does); ``counts.csv`` has the
columns ``image, count, n_centres, doubt`` (the count's warning, :attr:`CountResult.doubt`,
empty when there is none); ``<stem>_count.png`` shows the image, the detected centres
and the count in a title bar. A file that is not an image, or an image that cannot be read or
counted, is reported in :attr:`BatchResult.errors` and the batch goes on. Cancel stops before
the next file; what was counted so far is still written.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError, CellsparseError
from ..core.images import to_rgb_uint8
from ..core.paths import atomic_target
from ..core.progress import Progress, ProgressCallback, run_sync
from ..formats.image_sources import read_image_file
from .counter import Counter, CountResult

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchResult",
    "count_folder",
    "count_folder_iter",
    "overlay_png",
    "read_image",
    "read_points_csv",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OUTPUT_NAMES = ("counts.json", "counts.csv")
OVERLAY_SUFFIX = "_count.png"


@dataclass
class BatchResult:
    """Per-image counts, centre numbers and doubts (keyed by path; a doubt only for the images
    whose count has one), per-file errors, written files."""

    counts: dict[str, float] = field(default_factory=dict)
    n_centres: dict[str, int] = field(default_factory=dict)
    doubts: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    overlays: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    cancelled: bool = False


def read_image(path: Path) -> np.ndarray:
    """An image file as an array (TIFF with tifffile, the rest with scikit-image)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise BadInputError(
            f"{path.name} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})."
        )
    return read_image_file(path)


def read_points_csv(path: str | Path) -> np.ndarray:
    """Cell centres (N x 2, y x) from a CSV: columns ``y, x``, or napari's Points export
    (``axis-0, axis-1, ...``: the last two axes), or else the last two columns."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"Could not read the points file {path} ({err}).") from err
    if not rows:
        return np.zeros((0, 2), np.float64)
    header = [h.strip().lower() for h in rows[0]]
    axes = [i for i, h in enumerate(header) if h.startswith("axis-")]
    if "y" in header and "x" in header:
        columns = [header.index("y"), header.index("x")]
    elif len(axes) >= 2:
        columns = axes[-2:]
    else:
        columns = [len(header) - 2, len(header) - 1]
    body = rows[1:] if any(not _is_number(h) for h in header) else rows
    try:
        points = np.array([[float(r[c]) for c in columns] for r in body if r], np.float64)
    except (ValueError, IndexError) as err:
        raise BadInputError(
            f"The points file {path.name} must have numeric y and x columns ({err})."
        ) from err
    if not np.isfinite(points).all():
        row = int(np.nonzero(~np.isfinite(points).all(axis=1))[0][0]) + 1
        raise BadInputError(f"The points file {path.name}: point {row} is not a finite number.")
    return points.reshape(-1, 2)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def overlay_png(image: np.ndarray, result: CountResult, path: Path, title: str) -> Path:
    """Write the image with the detected centres (red rings) and ``title`` above it."""
    from PIL import Image, ImageDraw

    rgb = to_rgb_uint8(image if image.ndim == 2 or image.shape[-1] <= 4 else image[..., :3])
    zoom = max(1, int(np.ceil(400 / max(rgb.shape[:2]))))
    picture = Image.fromarray(rgb).resize((rgb.shape[1] * zoom, rgb.shape[0] * zoom), Image.NEAREST)
    bar = 22
    canvas = Image.new("RGB", (picture.width, picture.height + bar), "white")
    canvas.paste(picture, (0, bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 5), title, fill="black")
    ring = 3 + zoom
    for y, x in np.asarray(result.centres).reshape(-1, 2):
        cy, cx = (y + 0.5) * zoom + bar, (x + 0.5) * zoom
        draw.ellipse((cx - ring, cy - ring, cx + ring, cy + ring), outline=(255, 40, 40), width=2)
    with atomic_target(path) as temp:
        canvas.save(temp, format="PNG")
    return path


def _inputs(folder: Path) -> list[Path]:
    """The files of ``folder`` to count (sorted), leaving out hidden files and our outputs."""
    if not folder.is_dir():
        raise BadInputError(f"The folder {folder} does not exist.")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name not in OUTPUT_NAMES
        and not p.name.endswith(OVERLAY_SUFFIX)
    )


def count_folder_iter(
    counter: Counter,
    folder: str | Path,
    out: str | Path,
    overlays: bool = True,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, BatchResult]:
    """Count the images of ``folder`` with ``counter``; write the outputs into ``out``."""
    files = _inputs(Path(folder))
    if not files:
        raise BadInputError(f"The folder {folder} holds no files to count.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    taken: set[str] = set()
    n = len(files)
    for i, path in enumerate(files):
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            break
        yield Progress(i, n, f"Counting {path.name} ({i + 1}/{n})")
        key = str(path)
        try:
            image = read_image(path)
            counted = counter.count(image)
        except CellsparseError as err:
            result.errors[key] = str(err)
            continue
        except Exception as err:  # one bad file must not stop the batch
            result.errors[key] = f"{type(err).__name__}: {err}"
            continue
        result.counts[key] = round(counted.count, 3)
        result.n_centres[key] = len(counted.centres)
        doubt = counted.doubt
        if doubt:
            result.doubts[key] = doubt
        if overlays:
            stem = path.stem if path.stem not in taken else f"{path.stem}_{path.suffix[1:]}"
            taken.add(stem)
            title = f"{path.name}: count {counted.count:.1f} ({len(counted.centres)} centres)"
            if doubt:
                title += ", doubtful: see counts.csv"
            result.overlays.append(
                overlay_png(image, counted, out / f"{stem}{OVERLAY_SUFFIX}", title)
            )
    yield Progress(len(result.counts) + len(result.errors), n, "Writing counts.json and counts.csv")
    result.outputs = _write_tables(result, out)
    return result


def _write_tables(result: BatchResult, out: Path) -> list[Path]:
    """counts.json and counts.csv, each written whole or not at all (a crash mid-write never
    leaves a truncated table in place of the previous one)."""
    json_path, csv_path = out / OUTPUT_NAMES[0], out / OUTPUT_NAMES[1]
    with atomic_target(json_path) as temp:
        temp.write_text(json.dumps(result.counts, indent=2) + "\n", encoding="utf-8")
    with atomic_target(csv_path) as temp, temp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "count", "n_centres", "doubt"])
        for key, count in result.counts.items():
            doubt = result.doubts.get(key, "")
            writer.writerow([key, f"{count:.3f}", result.n_centres[key], doubt])
    return [json_path, csv_path]


def count_folder(
    counter: Counter,
    folder: str | Path,
    out: str | Path,
    overlays: bool = True,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> BatchResult:
    """Synchronous :func:`count_folder_iter`; ``progress(event)`` gets each Progress."""
    return run_sync(count_folder_iter(counter, folder, out, overlays, cancel), progress)
