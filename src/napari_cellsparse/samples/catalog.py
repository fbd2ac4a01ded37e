"""Sample images with ground truth: a generated one (always) and StarDist's (with stardist)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.errors import BackendUnavailableError, BadInputError
from .generated import make_nuclei

__all__ = ["SAMPLE_NAMES", "Sample", "load_sample", "read_boxes", "sample_file"]

SAMPLE_NAMES = ("nuclei", "stardist")


@dataclass
class Sample:
    """A sample image, its ground-truth labels and (for some) box prompts."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray  # N x 4, x0 y0 x1 y1

    def boxes_yx_corners(self) -> list[np.ndarray]:
        """Boxes as napari rectangles (4 corners, y x)."""
        return [
            np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)
            for x0, y0, x1, y1 in self.boxes
        ]


def sample_file(name: str) -> Path:
    """Path of a file shipped in ``sample_data/`` (inside the installed package)."""
    return Path(str(resources.files("napari_cellsparse") / "sample_data" / name))


def read_boxes(path: str | Path) -> np.ndarray:
    """Boxes from a CSV with the header ``x0,y0,x1,y1`` (image pixels, samapi's order)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = set(reader.fieldnames or [])
            if not {"x0", "y0", "x1", "y1"} <= fields:
                raise BadInputError(
                    f"{path}: the boxes file needs a header with x0,y0,x1,y1; "
                    f"found {sorted(fields)}."
                )
            rows = [[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in reader]
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"Could not read the boxes file {path} ({err}).") from err
    except (TypeError, ValueError) as err:
        raise BadInputError(f"{path}: every box needs four numbers ({err}).") from err
    if not rows:
        raise BadInputError(f"{path} holds no boxes.")
    boxes = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(boxes).all():
        row = int(np.nonzero(~np.isfinite(boxes).all(axis=1))[0][0]) + 1
        raise BadInputError(f"{path}: box {row} has a coordinate that is not a finite number.")
    return boxes


def load_sample(name: str = "nuclei") -> Sample:
    """Load a sample by name (see :data:`SAMPLE_NAMES`)."""
    if name == "nuclei":
        image, labels = make_nuclei()
        return Sample(
            "nuclei (generated)", image, labels, read_boxes(sample_file("nuclei_boxes.csv"))
        )
    if name == "stardist":
        try:
            from stardist.data import test_image_nuclei_2d
        except ImportError as err:
            raise BackendUnavailableError(
                "StarDist (for its sample image)", "stardist", err
            ) from err
        image, labels = test_image_nuclei_2d(return_mask=True)
        return Sample("nuclei (StarDist sample)", image, labels.astype(np.int32), np.zeros((0, 4)))
    raise BadInputError(f"Unknown sample {name!r}; choose one of {', '.join(SAMPLE_NAMES)}.")
