"""``cellsparse count``: train a cell counter from points and/or count images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.limits import check_training
from ._common import (
    add_device,
    command,
    parse_settings,
    print_progress,
    print_step,
    print_trained,
    read_image,
)


def register(sub: Any) -> None:
    """Add the ``count`` command."""
    count = command(sub, "count", help="count cells: train from points and/or count images")
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
    add_device(count)
    count.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train a counter from images + points CSVs, and/or count an image or a folder."""
    from ..core.errors import BadInputError
    from ..counting import count_folder, load_counter, train_counter
    from ..counting.batch import read_image as read_count_image
    from ..counting.batch import read_points_csv

    training = bool(args.image or args.points)
    if training and len(args.image or []) != len(args.points or []):
        raise BadInputError("Give one --points CSV for every --image, in the same order.")
    if args.background and len(args.background) != len(args.image or []):
        raise BadInputError("Give one --background mask for every --image, or none.")
    if not training and not args.input:
        raise BadInputError("Nothing to do: give --image/--points to train, --input to count.")
    if training:
        images = [read_image(spec)[0] for spec in args.image]
        points = [read_points_csv(path) for path in args.points]
        background = [read_count_image(Path(p)) > 0 for p in args.background or []] or None
        settings = parse_settings(args.set or [])
        check_training(args.steps, settings)
        if args.diameter:
            settings["diameter"] = args.diameter

        counter = train_counter(
            images,
            points,
            name=args.name,
            background=background,
            steps=args.steps,
            progress=print_step,
            reset=args.reset,
            device=args.device,
            **settings,
        )
        print_trained("counter", counter, counter.device)
    else:
        counter = load_counter(args.model or args.name, device=args.device)
    if not args.input:
        return 0
    source = Path(args.input)
    if source.is_dir():
        result = count_folder(counter, source, args.out, progress=print_progress)
        for path, message in result.errors.items():
            print(f"skipped {path}: {message}", file=sys.stderr)
        for path, message in result.doubts.items():
            print(f"warning: {path}: {message}", file=sys.stderr)
        print(f"counted {len(result.counts)} image(s); wrote {', '.join(map(str, result.outputs))}")
        return 0
    counted = counter.count(read_count_image(source))
    print(f"{source}\t{counted.count:.2f}\t{len(counted.centres)} centres")
    if counted.doubt:
        print(f"warning: {counted.doubt}", file=sys.stderr)
    return 0
