"""Sample data contributions (File > Open Sample)."""

from __future__ import annotations

from typing import Any

from ..core.sparse_labels import SPARSE_KEY
from ..samples.catalog import Sample, load_sample

__all__ = ["generated_nuclei", "stardist_nuclei"]


SPARSE_LAYER = "Sparse annotation (from ground truth)"


def sparse_annotation_layer(sample: Sample) -> tuple[Any, dict[str, Any], str]:
    """A ready sparse annotation (4 darkest + 4 brightest cells, background band), made by
    the project's code from the sample's ground truth so a new user can press Train at once."""
    from ..samples.sparse_annotation import sparse_from_truth

    return (
        sparse_from_truth(sample.image, sample.labels, k=4),
        {"name": SPARSE_LAYER, "metadata": {SPARSE_KEY: True}},
        "labels",
    )


def _layers(name: str) -> list[tuple[Any, dict[str, Any], str]]:
    sample = load_sample(name)
    return [
        (sample.image, {"name": sample.name}, "image"),
        sparse_annotation_layer(sample),
        (
            sample.boxes_yx_corners(),
            {
                "name": "SAM prompts",
                "shape_type": "rectangle",
                "edge_color": "yellow",
                "face_color": "transparent",
                "edge_width": 2,
            },
            "shapes",
        ),
    ]


def generated_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """Generated nuclei (works with any extras) and a few box prompts."""
    return _layers("nuclei")


def stardist_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """StarDist's 2D nuclei image (needs the ``stardist`` extra)."""
    sample = load_sample("stardist")
    return [(sample.image, {"name": sample.name}, "image"), sparse_annotation_layer(sample)]
