"""``cellsparse train``, ``predict`` and ``export``: a segmentation model's life from sparse
annotations to a bioimage.io package."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.limits import check_training
from ._common import (
    add_device,
    command,
    parse_settings,
    print_step,
    print_trained,
    read_annotation,
    read_image,
    write_labels,
)


def register(sub: Any) -> None:
    """Add the ``train``, ``predict`` and ``export`` commands."""
    train = command(sub, "train", help="train a model on sparse annotations")
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
    add_device(train)
    train.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="other settings")
    train.set_defaults(func=run_train)

    predict = command(sub, "predict", help="segment an image with a trained model")
    predict.add_argument("--model", required=True, help="model name or model folder")
    predict.add_argument("--image", required=True, help="image file or sample:NAME")
    predict.add_argument("--diameter", type=float, help="cell diameter in pixels (default: auto)")
    predict.add_argument("--axes", help="e.g. ZYX, YXC, CYX when the shape is ambiguous")
    predict.add_argument("--min-area", type=int, default=0, help="drop smaller objects (pixels)")
    add_device(predict)
    predict.add_argument("--out", default="out", help="output folder")
    predict.set_defaults(func=run_predict)

    export = command(sub, "export", help="write a model as a bioimage.io model package (.zip)")
    export.add_argument("--model", required=True, help="model name or model folder")
    export.add_argument("--out", required=True, help="the .zip file to write")
    export.add_argument(
        "--image", help="image file or sample:NAME for the test input (default: synthetic cells)"
    )
    export.add_argument("--diameter", type=float, help="cell diameter in --image (default: auto)")
    export.add_argument("--author", default="napari-cellsparse user", help="the package's author")
    export.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    """Train (or continue training) a model on images and their sparse annotations."""
    from ..training import train

    if len(args.image) != len(args.labels):
        from ..core.errors import BadInputError

        raise BadInputError("Give one --labels for every --image, in the same order.")
    settings = parse_settings(args.set or [])
    check_training(args.steps, settings)
    images = [read_image(spec)[0] for spec in args.image]
    labels = [read_annotation(spec) for spec in args.labels]

    model = train(
        args.backend,
        images,
        labels,
        name=args.name,
        steps=args.steps,
        progress=print_step,
        reset=args.reset,
        device=args.device,
        **settings,
    )
    print_trained(f"{model.backend} model", model, model.info["device"])
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Segment an image with a stored model; write labels and their table."""
    from ..training import load_model

    model = load_model(args.model, device=args.device)
    image, stem = read_image(args.image)
    labels = model.predict(image, diameter=args.diameter, axes=args.axes, min_area=args.min_area)
    diameters = ", ".join(f"{d:.1f}" for d in model.info["last_diameters"][:5])
    write_labels(Path(args.out), stem, labels, note=f"; diameter {diameters} px")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a stored model as a bioimage.io model package."""
    from ..training.bioimage_io import export_model

    image = read_image(args.image)[0] if args.image else None
    out = export_model(
        args.model, args.out, image=image, diameter=args.diameter, author=args.author
    )
    print(f"wrote {out} (bioimage.io model package)")
    return 0
