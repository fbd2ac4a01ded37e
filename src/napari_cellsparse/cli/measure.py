"""``cellsparse measure``: per-cell measurements of a label image (QuPath-style table)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import command, read_image


def register(sub: Any) -> None:
    """Add the ``measure`` command."""
    measure = command(
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
    measure.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure every object of a label image (QuPath-style table, optional GeoJSON)."""
    from ..formats.geojson import write_features
    from ..formats.image_sources import pixel_size_from_tiff
    from ..formats.tables import write_table
    from ..scale.measure import measure_objects, measured_features

    labels, _ = read_image(args.labels)
    image = read_image(args.image)[0] if args.image else None
    nuclei = read_image(args.nuclei)[0] if args.nuclei else None
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
