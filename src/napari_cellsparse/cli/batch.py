"""``cellsparse batch``: segment a folder or a DeepCell workspace with a model, on Dask, and
optionally write the results as a QuPath project."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import command, print_progress


def register(sub: Any) -> None:
    """Add the ``batch`` command."""
    batch = command(
        sub, "batch", help="segment a folder or a DeepCell workspace with a model, on Dask"
    )
    batch.add_argument("--model", required=True, help="model name or model folder")
    batch.add_argument("--input", required=True, help="image folder, or the DeepCell workspace")
    batch.add_argument("--out", help="output folder (folder layout)")
    batch.add_argument(
        "--layout",
        default="folder",
        choices=["folder", "deepcell"],
        help="a folder of images, or a DeepCell workspace (OMETIFF/ in, SEGMASK/ out)",
    )
    batch.add_argument("--pattern", default="*", help="file name filter, e.g. '*.ome.tif'")
    batch.add_argument(
        "--scheduler",
        help="Dask scheduler address (tcp://host:8786); default: a local cluster; "
        "'none': no Dask, this process",
    )
    batch.add_argument("--workers", type=int, default=2, help="local cluster worker processes")
    batch.add_argument("--threads", type=int, default=1, help="threads per local worker")
    batch.add_argument("--block", type=int, default=1024, help="block size in pixels")
    batch.add_argument("--halo", type=int, help="context around blocks (default: 2 diameters)")
    batch.add_argument("--diameter", type=float, help="cell diameter in pixels (default: auto)")
    batch.add_argument("--pixel-size", type=float, help="µm per pixel (default: from metadata)")
    batch.add_argument("--channel-names", help="comma-separated names for the table columns")
    batch.add_argument(
        "--mask-format",
        default="tif",
        choices=["tif", "zarr", "ome-zarr"],
        help="masks as tiled TIFF, zarr, or OME-Zarr labels with a pyramid (default: tif)",
    )
    batch.add_argument(
        "--level",
        type=int,
        default=0,
        help="resolution level of OME-Zarr inputs (default: 0, full resolution)",
    )
    batch.add_argument(
        "--table-format", default="csv", choices=["csv", "tsv"], help="measurement tables"
    )
    batch.add_argument(
        "--no-geojson", dest="geojson", action="store_false", help="skip the GeoJSON files"
    )
    batch.add_argument("--no-resume", action="store_true", help="redo images already done")
    batch.add_argument(
        "--qupath-project",
        metavar="DIR",
        help="also write a QuPath project of the results (new or empty folder)",
    )
    batch.add_argument(
        "--compartment",
        default="nucleus",
        choices=["nucleus", "whole-cell"],
        help="DeepCell layout: what the model segments",
    )
    batch.add_argument("--input-dir", default="OMETIFF", help="DeepCell: images sub-folder")
    batch.add_argument("--mask-dir", default="SEGMASK", help="DeepCell: masks sub-folder")
    batch.add_argument("--report-dir", default="REPORTS", help="DeepCell: tables sub-folder")
    batch.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the batch; exit status 1 when an image failed."""
    from ..core.errors import BadInputError
    from ..core.progress import run_sync
    from ..scale.batch import BatchOptions, run_batch
    from ..scale.workspace import deepcell_items, folder_items

    if args.qupath_project:
        from ..formats.qupath_project import check_project_folder

        check_project_folder(args.qupath_project)
        if args.level:
            raise BadInputError("A QuPath project needs objects at full resolution (--level 0).")
        args.geojson = True  # the project's objects
    if args.layout == "deepcell":
        items = deepcell_items(
            args.input,
            args.compartment,
            args.pattern,
            args.input_dir,
            args.mask_dir,
            args.report_dir,
            geojson=args.geojson,
        )
        summary_path = Path(args.input) / args.report_dir / "batch_summary.json"
    else:
        if not args.out:
            raise BadInputError("Give --out, the folder for the results.")
        items = folder_items(
            args.input, args.out, args.pattern, args.mask_format, args.table_format, args.geojson
        )
        summary_path = Path(args.out) / "batch_summary.json"
    options = BatchOptions(
        block=args.block,
        halo=args.halo,
        diameter=args.diameter,
        pixel_size=args.pixel_size,
        channel_names=tuple(args.channel_names.split(",")) if args.channel_names else None,
        level=args.level,
    )
    work = run_batch(
        items,
        args.model,
        options,
        scheduler=args.scheduler,
        workers=args.workers,
        threads_per_worker=args.threads,
        resume=not args.no_resume,
    )
    summary = run_sync(work, print_progress)
    summary.write(summary_path)
    if args.qupath_project:
        _write_project(args.qupath_project, items, summary)
    for result in summary.of("failed"):
        print(f"FAILED {result.image}: {result.error}")
    print(
        f"{len(summary.of('done'))} done, {len(summary.of('skipped'))} skipped, "
        f"{len(summary.of('failed'))} failed in {summary.seconds:.1f} s on {summary.scheduler}; "
        f"summary in {summary_path}"
    )
    return 1 if summary.of("failed") else 0


def _write_project(folder: str, items: Any, summary: Any) -> None:
    """The QuPath project of the images that have results; the others are named."""
    from ..formats.qupath_project import write_batch_project

    path, left_out = write_batch_project(folder, items, summary)
    if path is not None:
        print(f"QuPath project with {len(items) - len(left_out)} image(s): {path}")
    if left_out:
        print(f"not in the QuPath project (no results): {', '.join(left_out)}")
