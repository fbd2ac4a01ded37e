"""``cellsparse sam`` (box prompts) and ``cellsparse automask`` (every object SAM finds)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..sam.automask import PRESETS as AUTOMASK_PRESETS
from ..sam.large_images import TILE_ABOVE
from ._common import (
    add_sam_model,
    command,
    parse_settings,
    print_progress,
    read_image,
    write_labels,
)


def register(sub: Any) -> None:
    """Add the ``sam`` and ``automask`` commands."""
    sam = command(sub, "sam", help="segment objects from SAM box prompts")
    sam.add_argument(
        "--image", required=True, help="image file, or sample:nuclei / sample:stardist"
    )
    sam.add_argument("--boxes", required=True, help="CSV with header x0,y0,x1,y1 (image pixels)")
    sam.add_argument("--out", default="out", help="output folder")
    sam.set_defaults(func=run_sam)

    automask = command(sub, "automask", help="every object SAM finds (automatic masks)")
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
    automask.set_defaults(func=run_automask)
    for parser in (sam, automask):
        _sam_arguments(parser)


def _sam_arguments(command: argparse.ArgumentParser) -> None:
    """Model, device, channels, cache and tiling options of the SAM commands."""
    add_sam_model(command, "SAM model: vit_t (MobileSAM) is fast on a CPU")
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


def _sam_for(args: argparse.Namespace, image: np.ndarray) -> tuple[Any, Any]:
    """SAM loaded per the arguments, and a tiled view of ``image`` when it is large."""
    from ..sam.embedding import EmbeddingCache
    from ..sam.large_images import TiledImage, needs_tiles
    from ..sam.prompting import SamPrompter

    cache = EmbeddingCache(disk_dir=args.cache_dir) if args.cache_dir else None
    prompter = SamPrompter.load(args.model, args.weights, args.device, cache)
    if not needs_tiles(image.shape, args.tile):
        return prompter, None
    tiled = TiledImage(prompter, image, args.channels, args.tile, args.overlap)
    print(f"large image: {len(tiled.tiles)} tiles of {args.tile} px", file=sys.stderr)
    return prompter, tiled


def run_sam(args: argparse.Namespace) -> int:
    """Segment the objects in the boxes of a CSV; write labels and their table."""
    from ..core.progress import run_sync
    from ..core.sparse_labels import paint_masks
    from ..samples.catalog import read_boxes

    image, stem = read_image(args.image)
    boxes = read_boxes(args.boxes)
    prompter, tiled = _sam_for(args, image)
    print(f"SAM {args.model} on {prompter.device}; {len(boxes)} boxes", file=sys.stderr)
    if tiled is None:
        run_sync(prompter.set_image(image, args.channels), progress=print_progress)
    else:
        run_sync(tiled.embed(tiled.regions_for_boxes(boxes)), progress=print_progress)
    masks = (tiled or prompter).boxes(boxes)
    labels = np.zeros(image.shape[:2], dtype=np.int32)
    ids = paint_masks(labels, masks)
    scores = {i: m.score for i, m in zip(ids, masks, strict=True) if i is not None}
    write_labels(Path(args.out), stem, labels, scores, background_id=1)
    return 0


def run_automask(args: argparse.Namespace) -> int:
    """Every object SAM finds: labels, their table and segment-anything's records."""
    from ..core.paths import atomic_target
    from ..core.progress import run_sync
    from ..sam.automask import AutomaskParams, generate_masks

    image, stem = read_image(args.image)
    preset = AUTOMASK_PRESETS[args.preset]
    params = AutomaskParams.from_dict({**preset, **parse_settings(args.set or [])})
    prompter, tiled = _sam_for(args, image)
    print(f"SAM {args.model} on {prompter.device}; automask", file=sys.stderr)
    if tiled is None:
        work = generate_masks(prompter, image, params, args.channels)
    else:
        work = tiled.automask(params)
    result = run_sync(work, progress=print_progress)
    labels, scores = result.labels_with_scores()
    write_labels(Path(args.out), f"{stem}_automask", labels, scores)
    # Every object the generator kept, before overlaps are resolved for the label image,
    # as segment-anything's records (bbox x, y, w, h; point_coords x, y).
    records = Path(args.out) / f"{stem}_automask_records.json"
    with atomic_target(records) as temp:
        temp.write_text(json.dumps({"params": params.as_dict(), "masks": result.records()}))
    print(f"wrote {records} ({len(result)} masks)")
    return 0
