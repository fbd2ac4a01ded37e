"""Where a batch reads its images and writes its results: a plain folder or a DeepCell workspace.

* **Folder**: every image in ``input`` (``pattern`` filters names) gives, in ``output``,
  ``<name>_labels.tif`` (or ``.zarr``, or ``.ome.zarr``: OME-Zarr labels with a pyramid),
  ``<name>_objects.csv`` (or ``.tsv``) and ``<name>_objects.geojson``.
* **DeepCell** (the deepcell-imaging layout): ``<workspace>/OMETIFF/<name>.ome.tif`` in;
  ``SEGMASK/<name>_NucleusMask.tiff`` or ``SEGMASK/<name>_WholeCellMask.tiff`` (by the
  compartment the model segments) and ``REPORTS/<name>_QUANT.tsv`` out. When the mask of the
  other compartment is already there (from a run with another model), the table pairs them
  and has Nucleus, Cytoplasm and Cell columns. The sub-folder names can be changed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BadInputError
from ..formats.image_sources import image_stem, is_image_file

__all__ = [
    "COMPARTMENTS",
    "MASK_SUFFIXES",
    "BatchItem",
    "deepcell_items",
    "folder_items",
]

COMPARTMENTS = {"nucleus": "_NucleusMask.tiff", "whole-cell": "_WholeCellMask.tiff"}
MASK_SUFFIXES = {"tif": ".tif", "zarr": ".zarr", "ome-zarr": ".ome.zarr"}


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch and the files its results go to (None: not wanted)."""

    image: Path
    labels: Path
    table: Path | None = None
    geojson: Path | None = None
    nuclei: Path | None = None  # a nucleus mask to pair with ``labels`` (cells) in the table
    cells: Path | None = None  # a whole-cell mask to pair with ``labels`` (nuclei)

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.labels, self.table, self.geojson) if p is not None]

    def done(self) -> bool:
        """Whether every output exists (outputs appear only once complete)."""
        return all(p.exists() for p in self.outputs)


def _images(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        raise BadInputError(f"The folder {folder} does not exist.")
    found = sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and fnmatch.fnmatch(p.name, pattern)
    )
    images = [p for p in found if is_image_file(p) or p.is_file()]
    if not images:
        raise BadInputError(f"No files matching {pattern!r} in {folder}.")
    return images


def folder_items(
    input_dir: str | Path,
    output_dir: str | Path,
    pattern: str = "*",
    mask_format: str = "tif",
    table_format: str = "csv",
    geojson: bool = True,
) -> list[BatchItem]:
    """One item per file of ``input_dir`` matching ``pattern`` (files that are not images
    are kept, so that the batch reports them rather than skipping them silently)."""
    if mask_format not in MASK_SUFFIXES or table_format not in ("csv", "tsv"):
        raise BadInputError(f"Masks are {', '.join(MASK_SUFFIXES)}; tables csv or tsv.")
    out = Path(output_dir)
    items = []
    for image in _images(Path(input_dir), pattern):
        stem = image_stem(image)
        items.append(
            BatchItem(
                image,
                out / f"{stem}_labels{MASK_SUFFIXES[mask_format]}",
                out / f"{stem}_objects.{table_format}",
                out / f"{stem}_objects.geojson" if geojson else None,
            )
        )
    return items


def deepcell_items(
    workspace: str | Path,
    compartment: str = "nucleus",
    pattern: str = "*",
    input_dir: str = "OMETIFF",
    mask_dir: str = "SEGMASK",
    report_dir: str = "REPORTS",
    geojson: bool = False,
) -> list[BatchItem]:
    """Items of a DeepCell-imaging workspace; ``compartment`` is what the model segments."""
    if compartment not in COMPARTMENTS:
        raise BadInputError(
            f"The compartment is one of {', '.join(COMPARTMENTS)}, not {compartment!r}."
        )
    root = Path(workspace)
    masks, reports = root / mask_dir, root / report_dir
    other = next(c for c in COMPARTMENTS if c != compartment)
    items = []
    for image in _images(root / input_dir, pattern):
        stem = image_stem(image)
        partner = masks / f"{stem}{COMPARTMENTS[other]}"
        items.append(
            BatchItem(
                image,
                masks / f"{stem}{COMPARTMENTS[compartment]}",
                reports / f"{stem}_QUANT.tsv",
                reports / f"{stem}_objects.geojson" if geojson else None,
                nuclei=partner if compartment == "whole-cell" else None,
                cells=partner if compartment == "nucleus" else None,
            )
        )
    return items
