"""The ``cellsparse`` command: the command-line front end of the engine (no window, no Qt)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import CellsparseError
from .core.progress import Progress
from .sam.automask import PRESETS as AUTOMASK_PRESETS
from .sam.large_images import TILE_ABOVE

__all__ = ["main"]

log = logging.getLogger("napari_cellsparse")


def _print_progress(event: Progress) -> None:
    if event.total:
        pct = 100.0 * event.step / event.total
        print(f"\r{event.message}: {pct:5.1f}%", end="", file=sys.stderr, flush=True)
        if event.step >= event.total:
            print(file=sys.stderr)


def _read_image(spec: str) -> tuple[np.ndarray, str]:
    if spec.startswith("sample:"):
        from .samples.catalog import load_sample

        name = spec.split(":", 1)[1]
        return load_sample(name).image, f"sample_{name}"
    from .formats.image_sources import read_image_file

    return read_image_file(spec), Path(spec).stem


def _cmd_sam(args: argparse.Namespace) -> int:
    from .core.progress import run_sync
    from .core.sparse_labels import paint_masks
    from .samples.catalog import read_boxes

    image, stem = _read_image(args.image)
    boxes = read_boxes(args.boxes)
    prompter, tiled = _sam_for(args, image)
    print(f"SAM {args.model} on {prompter.device}; {len(boxes)} boxes", file=sys.stderr)
    if tiled is None:
        run_sync(prompter.set_image(image, args.channels), progress=_print_progress)
    else:
        run_sync(tiled.embed(tiled.regions_for_boxes(boxes)), progress=_print_progress)
    masks = (tiled or prompter).boxes(boxes)
    labels = np.zeros(image.shape[:2], dtype=np.int32)
    ids = paint_masks(labels, masks)
    scores = {i: m.score for i, m in zip(ids, masks, strict=True) if i is not None}
    _write_labels(Path(args.out), stem, labels, scores, background_id=1)
    return 0


def _sam_for(args: argparse.Namespace, image: np.ndarray) -> tuple[Any, Any]:
    """SAM loaded per the arguments, and a tiled view of ``image`` when it is large."""
    from .sam.embedding import EmbeddingCache
    from .sam.large_images import TiledImage, needs_tiles
    from .sam.prompting import SamPrompter

    cache = EmbeddingCache(disk_dir=args.cache_dir) if args.cache_dir else None
    prompter = SamPrompter.load(args.model, args.weights, args.device, cache)
    if not needs_tiles(image.shape, args.tile):
        return prompter, None
    tiled = TiledImage(prompter, image, args.channels, args.tile, args.overlap)
    print(f"large image: {len(tiled.tiles)} tiles of {args.tile} px", file=sys.stderr)
    return prompter, tiled


def _write_labels(
    out: Path,
    stem: str,
    labels: np.ndarray,
    scores: dict[int, float] | None = None,
    background_id: int | None = None,
    note: str = "",
) -> None:
    """Write ``<stem>_labels.tif`` and, for a 2D image, ``<stem>_objects.csv`` into ``out``,
    both atomically and together (one that fails leaves neither); ``note`` ends the report."""
    import tifffile

    from .core.errors import BadInputError
    from .core.paths import atomic_target
    from .formats.tables import write_objects_csv

    tif = out / f"{stem}_labels.tif"
    table = out / f"{stem}_objects.csv"
    try:
        if labels.ndim != 2:
            with atomic_target(tif) as temp_tif:
                tifffile.imwrite(temp_tif, labels, compression="zlib")
            print(f"wrote {tif} ({int(labels.max())} objects{note})")
            return
        with atomic_target(tif) as temp_tif, atomic_target(table) as temp_table:
            tifffile.imwrite(temp_tif, labels, compression="zlib")
            rows = write_objects_csv(temp_table, labels, scores, background_id=background_id)
    except OSError as err:
        raise BadInputError(f"Could not write the results into {out}: {err}") from err
    print(f"wrote {tif} and {table} ({rows} objects{note})")


def _cmd_automask(args: argparse.Namespace) -> int:
    from .core.progress import run_sync
    from .sam.automask import PRESETS, AutomaskParams, generate_masks

    image, stem = _read_image(args.image)
    params = AutomaskParams.from_dict({**PRESETS[args.preset], **_parse_settings(args.set or [])})
    prompter, tiled = _sam_for(args, image)
    print(f"SAM {args.model} on {prompter.device}; automask", file=sys.stderr)
    if tiled is None:
        work = generate_masks(prompter, image, params, args.channels)
    else:
        work = tiled.automask(params)
    result = run_sync(work, progress=_print_progress)
    labels, scores = result.labels_with_scores()
    _write_labels(Path(args.out), f"{stem}_automask", labels, scores)
    # Every object the generator kept, before overlaps are resolved for the label image,
    # as segment-anything's records (bbox x, y, w, h; point_coords x, y).
    from .core.paths import atomic_target

    records = Path(args.out) / f"{stem}_automask_records.json"
    with atomic_target(records) as temp:
        temp.write_text(json.dumps({"params": params.as_dict(), "masks": result.records()}))
    print(f"wrote {records} ({len(result)} masks)")
    return 0


def _read_annotation(spec: str) -> np.ndarray:
    """An annotation file, or ``sample:NAME`` for the sample's ready sparse annotation."""
    if spec.startswith("sample:"):
        from .samples.catalog import load_sample
        from .samples.sparse_annotation import sparse_from_truth

        sample = load_sample(spec.split(":", 1)[1])
        return sparse_from_truth(sample.image, sample.labels, k=4)
    return _read_image(spec)[0]


def _print_step(step: int, total: int, info: dict) -> None:
    """Training progress on stderr, about every 5 % of the steps and at the end."""
    if step == total or step % max(1, total // 20) == 0:
        print(f"step {step}/{total} loss {info['loss']:.4f}", file=sys.stderr, flush=True)


def _parse_settings(pairs: Sequence[str]) -> dict[str, object]:
    """``--set name=value`` items → settings (:mod:`napari_cellsparse.core.settings_text`)."""
    from .core.settings_text import parse_setting_pairs

    return parse_setting_pairs(pairs)


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    if len(args.image) != len(args.labels):
        from .core.errors import BadInputError

        raise BadInputError("Give one --labels for every --image, in the same order.")
    images = [_read_image(spec)[0] for spec in args.image]
    labels = [_read_annotation(spec) for spec in args.labels]

    model = train(
        args.backend,
        images,
        labels,
        name=args.name,
        steps=args.steps,
        progress=_print_step,
        reset=args.reset,
        device=args.device,
        **_parse_settings(args.set or []),
    )
    session = model.info["sessions"][-1]
    print(
        f"trained {model.backend} model {model.name!r}: {session['steps']} steps in "
        f"{session['train_s']:.1f} s on {model.info['device']}, saved in {model.folder}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .training import load_model

    model = load_model(args.model, device=args.device)
    image, stem = _read_image(args.image)
    labels = model.predict(image, diameter=args.diameter, axes=args.axes, min_area=args.min_area)
    diameters = ", ".join(f"{d:.1f}" for d in model.info["last_diameters"][:5])
    _write_labels(Path(args.out), stem, labels, note=f"; diameter {diameters} px")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .training.bioimage_io import export_model

    image = _read_image(args.image)[0] if args.image else None
    out = export_model(
        args.model, args.out, image=image, diameter=args.diameter, author=args.author
    )
    print(f"wrote {out} (bioimage.io model package)")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    """Measure every object of a label image (QuPath-style table, optional GeoJSON)."""
    from .formats.geojson import write_features
    from .formats.image_sources import pixel_size_from_tiff
    from .formats.tables import write_table
    from .scale.measure import measure_objects, measured_features

    labels, _ = _read_image(args.labels)
    image = _read_image(args.image)[0] if args.image else None
    nuclei = _read_image(args.nuclei)[0] if args.nuclei else None
    pixel_size, source = args.pixel_size, "--pixel-size"
    for spec in (args.image, args.labels):
        if pixel_size is None and spec:
            pixel_size, source = pixel_size_from_tiff(spec), Path(spec).name
    names = [n.strip() for n in args.channel_names.split(",")] if args.channel_names else None
    table = measure_objects(
        labels,
        image,
        nuclei=nuclei,
        pixel_size=pixel_size,
        channel_names=names,
        image_name=Path(args.image or args.labels).name,
    )
    out = write_table(table, args.out)
    size = f"pixel size {pixel_size:g} µm from {source}" if pixel_size else "no pixel size"
    print(f"wrote {out} ({len(table)} objects, {len(table.columns)} columns; {size})")
    if args.geojson:
        kind = "cell" if nuclei is not None else "detection"
        geojson = write_features(args.geojson, measured_features(labels, table, object_type=kind))
        print(f"wrote {geojson}")
    return 0


def _cmd_count(args: argparse.Namespace) -> int:
    """Train a counter from images + points CSVs, and/or count an image or a folder."""
    from .core.errors import BadInputError
    from .counting import count_folder, load_counter, train_counter
    from .counting.batch import read_image, read_points_csv

    training = bool(args.image or args.points)
    if training and len(args.image or []) != len(args.points or []):
        raise BadInputError("Give one --points CSV for every --image, in the same order.")
    if args.background and len(args.background) != len(args.image or []):
        raise BadInputError("Give one --background mask for every --image, or none.")
    if not training and not args.input:
        raise BadInputError("Nothing to do: give --image/--points to train, --input to count.")
    if training:
        images = [_read_image(spec)[0] for spec in args.image]
        points = [read_points_csv(path) for path in args.points]
        background = [read_image(Path(p)) > 0 for p in args.background or []] or None
        settings = _parse_settings(args.set or [])
        if args.diameter:
            settings["diameter"] = args.diameter

        counter = train_counter(
            images,
            points,
            name=args.name,
            background=background,
            steps=args.steps,
            progress=_print_step,
            reset=args.reset,
            device=args.device,
            **settings,
        )
        session = counter.info["sessions"][-1]
        print(
            f"trained counter {counter.name!r}: {session['steps']} steps in "
            f"{session['train_s']:.1f} s on {counter.device}, saved in {counter.folder}"
        )
    else:
        counter = load_counter(args.model or args.name, device=args.device)
    if not args.input:
        return 0
    source = Path(args.input)
    if source.is_dir():
        result = count_folder(counter, source, args.out, progress=_print_progress)
        for path, message in result.errors.items():
            print(f"skipped {path}: {message}", file=sys.stderr)
        print(f"counted {len(result.counts)} image(s); wrote {', '.join(map(str, result.outputs))}")
        return 0
    counted = counter.count(read_image(source))
    print(f"{source}\t{counted.count:.2f}\t{len(counted.centres)} centres")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .training import list_models, models_dir

    for meta in list_models():
        if "error" in meta:
            print(f"{meta['name']}\tdamaged: {meta['error']}")
        else:
            print(
                f"{meta['name']}\t{meta.get('backend')}\t{meta.get('steps')} steps\t"
                f"{meta.get('images')} image(s)\tupdated {meta.get('updated')}"
            )
    print(f"model folder: {models_dir()}")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from .core.errors import BadInputError
    from .sam.registry import add_local_weights, read_entries
    from .sam.weights import CHECKPOINTS, download, weights_dir

    if args.action == "list":
        for ckpt in CHECKPOINTS.values():
            have = "cached" if (weights_dir() / ckpt.filename).is_file() else "missing"
            print(f"{ckpt.model_type}\t{ckpt.size_mb} MB\t{have}\t{ckpt.url}")
        for entry in read_entries():
            print(f"{entry['type']}\t{entry['name']}\tregistered\t{entry['url']}")
        print(f"cache folder: {weights_dir()}")
        return 0
    if args.action == "add":
        if not args.file:
            raise BadInputError("weights add needs the checkpoint FILE to add.")
        url, path = add_local_weights(args.model, args.file, args.name)
        print(f"registered {args.model} weights {url} (copied to {path})")
        return 0
    path = download(args.model, args.url, args.sha256)
    print(f"saved {path}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .core.errors import BadInputError
    from .core.progress import run_sync
    from .scale.batch import BatchOptions, run_batch
    from .scale.workspace import deepcell_items, folder_items

    if args.qupath_project:
        from .formats.qupath_project import check_project_folder

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
    summary = run_sync(work, _print_progress)
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
    from .formats.qupath_project import batch_project_images, write_qupath_project

    images, left_out = batch_project_images(items, summary)
    if images:
        path = write_qupath_project(folder, images)
        print(f"QuPath project with {len(images)} image(s): {path}")
    if left_out:
        print(f"not in the QuPath project (no results): {', '.join(left_out)}")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .core.errors import BackendUnavailableError
    from .core.paths import data_home

    try:
        import uvicorn

        from .sam.embedding import EmbeddingCache
        from .sam.fetch import DownloadPolicy
        from .server.app import create_app
        from .server.guards import allowed_hosts
        from .server.sam_service import SamService
        from .server.training_service import TrainingService
    except ImportError as err:
        raise BackendUnavailableError("The server", "server", err) from err
    token = args.token or os.environ.get("CELLSPARSE_TOKEN") or None
    if args.host not in LOOPBACK:
        print(
            f"WARNING: listening on {args.host}: other machines can reach this server"
            + ("" if token else " and no --token is set: anyone on the network can use it")
            + ".",
            file=sys.stderr,
        )
    cache = EmbeddingCache(disk_dir=data_home() / "embeddings")
    weights = DownloadPolicy(allow_private=args.allow_private_weights, max_mb=args.max_weights_mb)
    app = create_app(
        SamService(cache, args.device),
        TrainingService(args.device),
        token,
        args.max_body_mb,
        allowed_hosts(args.host, args.allow_host),
        weights,
    )
    print(f"serving samapi and cellsparse-api routes on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _sam_arguments(command: argparse.ArgumentParser) -> None:
    """Model, device, channels, cache and tiling options of the SAM commands."""
    command.add_argument(
        "--model",
        default="vit_t",
        choices=["vit_h", "vit_l", "vit_b", "vit_t"],
        help="SAM model: vit_t (MobileSAM) is fast on a CPU",
    )
    command.add_argument("--weights", help="checkpoint file (default: the cached official one)")
    command.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    command.add_argument("--channels", type=int, nargs="+", help="channel indices (YXC images)")
    command.add_argument("--cache-dir", help="keep image embeddings on disk in this folder")
    command.add_argument(
        "--tile",
        type=int,
        default=1024,
        help=f"tile size for large images (tiled above {TILE_ABOVE} tiles)",
    )
    command.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels")


DESCRIPTION = (
    "Cell segmentation from a few annotated cells, without a window: SAM prompts, training, "
    "prediction, batches on Dask, measurements, counting and the server for QuPath. "
    "'cellsparse COMMAND -h' lists a command's options."
)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that names each option's default (when it has one and the help does not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)
        if shown and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose ``-h`` starts with what it does."""
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        formatter_class=_HelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``cellsparse`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cellsparse", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"cellsparse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sam = _command(sub, "sam", help="segment objects from SAM box prompts")
    sam.add_argument(
        "--image", required=True, help="image file, or sample:nuclei / sample:stardist"
    )
    sam.add_argument("--boxes", required=True, help="CSV with header x0,y0,x1,y1 (image pixels)")
    sam.add_argument("--out", default="out", help="output folder")
    sam.set_defaults(func=_cmd_sam)

    automask = _command(sub, "automask", help="every object SAM finds (automatic masks)")
    automask.add_argument("--image", required=True, help="image file, or sample:NAME")
    automask.add_argument(
        "--preset",
        default="SAM defaults",
        choices=list(AUTOMASK_PRESETS),
        help="parameter set; nuclei and cells drop tiny fragments",
    )
    automask.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="generator parameters, e.g. points_per_side=16",
    )
    automask.add_argument("--out", default="out", help="output folder")
    automask.set_defaults(func=_cmd_automask)
    for command in (sam, automask):
        _sam_arguments(command)

    train = _command(sub, "train", help="train a model on sparse annotations")
    train.add_argument("--backend", default="unet", help="unet, stardist or cellpose")
    train.add_argument(
        "--image",
        action="append",
        required=True,
        help="image file or sample:NAME (repeat for several images)",
    )
    train.add_argument(
        "--labels",
        action="append",
        required=True,
        help="annotation file (0 = not annotated, 1 = background, 2+ = cells), "
        "or sample:NAME for the sample's ready sparse annotation",
    )
    train.add_argument("--name", default="model", help="model name in the model store")
    train.add_argument("--steps", type=int, help="training steps (default: the backend's)")
    train.add_argument("--reset", action="store_true", help="start afresh instead of continuing")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    train.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="other settings")
    train.set_defaults(func=_cmd_train)

    predict = _command(sub, "predict", help="segment an image with a trained model")
    predict.add_argument("--model", required=True, help="model name or model folder")
    predict.add_argument("--image", required=True, help="image file or sample:NAME")
    predict.add_argument("--diameter", type=float, help="cell diameter in pixels (default: auto)")
    predict.add_argument("--axes", help="e.g. ZYX, YXC, CYX when the shape is ambiguous")
    predict.add_argument("--min-area", type=int, default=0, help="drop smaller objects (pixels)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    predict.add_argument("--out", default="out", help="output folder")
    predict.set_defaults(func=_cmd_predict)

    export = _command(sub, "export", help="write a model as a bioimage.io model package (.zip)")
    export.add_argument("--model", required=True, help="model name or model folder")
    export.add_argument("--out", required=True, help="the .zip file to write")
    export.add_argument(
        "--image", help="image file or sample:NAME for the test input (default: synthetic cells)"
    )
    export.add_argument("--diameter", type=float, help="cell diameter in --image (default: auto)")
    export.add_argument("--author", default="napari-cellsparse user", help="the package's author")
    export.set_defaults(func=_cmd_export)

    batch = _command(
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
    batch.set_defaults(func=_cmd_batch)

    measure = _command(
        sub, "measure", help="per-cell measurements of a label image (QuPath-style table)"
    )
    measure.add_argument("--labels", required=True, help="label image (cells, or the only mask)")
    measure.add_argument("--image", help="intensity image (YX, YXC or CYX) to measure")
    measure.add_argument("--nuclei", help="nucleus label image: Nucleus/Cytoplasm/Cell columns")
    measure.add_argument(
        "--pixel-size", type=float, help="µm per pixel (default: from the TIFF metadata)"
    )
    measure.add_argument("--channel-names", help="comma-separated, e.g. DAPI,CD45")
    measure.add_argument("--out", required=True, help="table file, .tsv or .csv")
    measure.add_argument("--geojson", help="also write the objects with their measurements")
    measure.set_defaults(func=_cmd_measure)

    serve = _command(
        sub, "serve", help="HTTP server speaking the samapi and cellsparse-api bodies (QuPath)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (or CELLSPARSE_TOKEN)"
    )
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    serve.add_argument("--max-body-mb", type=float, default=512.0, help="largest request body")
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to NAME (Host header; repeatable); loopback "
        "names, --host and, with --host 0.0.0.0, this machine's names are always answered",
    )
    serve.add_argument(
        "--allow-private-weights",
        action="store_true",
        help="let POST /sam/weights/ download from loopback and private addresses",
    )
    serve.add_argument(
        "--max-weights-mb", type=float, help="largest weights download (default: per model)"
    )
    serve.set_defaults(func=_cmd_serve)

    count = _command(sub, "count", help="count cells: train from points and/or count images")
    count.add_argument("--image", action="append", help="training image (repeat)")
    count.add_argument("--points", action="append", help="centres CSV (y,x) per --image")
    count.add_argument("--background", action="append", help="background mask per --image")
    count.add_argument("--name", default="counter", help="counter name in the model store")
    count.add_argument("--model", help="counter to count with (default: --name)")
    count.add_argument("--steps", type=int, help="training steps (default: the counter's)")
    count.add_argument("--diameter", type=float, help="cell diameter in pixels (default: auto)")
    count.add_argument("--reset", action="store_true", help="start afresh instead of continuing")
    count.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="other counter settings")
    count.add_argument("--input", help="an image, or a folder to count (counts.json/.csv, PNGs)")
    count.add_argument("--out", default="out/counts", help="output folder for a folder")
    count.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    count.set_defaults(func=_cmd_count)

    models = _command(sub, "models", help="list the stored models")
    models.set_defaults(func=_cmd_models)

    weights = _command(sub, "weights", help="list, download or add SAM checkpoints")
    weights.add_argument("action", choices=["list", "download", "add"])
    weights.add_argument("file", nargs="?", help="add: a local checkpoint file to register")
    weights.add_argument("--name", help="add: the name clients see (default: the file's stem)")
    weights.add_argument(
        "--model",
        default="vit_t",
        choices=["vit_h", "vit_l", "vit_b", "vit_t"],
        help="which SAM checkpoint",
    )
    weights.add_argument("--url", help="download from this mirror instead")
    weights.add_argument("--sha256", help="expected checksum for --url")
    weights.set_defaults(func=_cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cellsparse``; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except CellsparseError as err:
        print(f"cellsparse: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellsparse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
