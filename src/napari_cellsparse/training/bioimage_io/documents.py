"""The human side of a bioimage.io package: its README, cover image and citations.

Only DOIs point outside the package (bioimage.io's offline checks and air-gapped consumers
must not need the internet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.images import normalize_percentile
from ..model import TrainedModel
from .networks import HALO_SHARE, PackagedNetwork

__all__ = ["CITATIONS", "citations", "training_summary", "write_cover", "write_readme"]

# (text, DOI) of the method every package was trained with, then per backend.
SPARSE_METHOD = (
    "Sugawara K. Training deep learning models for cell image segmentation with sparse "
    "annotations. bioRxiv (2023).",
    "10.1101/2023.06.13.544786",
)
CITATIONS: dict[str, tuple[str, str]] = {
    "unet": (
        "Sugawara K, Cevrim C, Averof M. Tracking cell lineages in 3D by incremental deep "
        "learning (ELEPHANT). eLife 11:e69380 (2022).",
        "10.7554/eLife.69380",
    ),
    "cellpose": (
        "Stringer C, Wang T, Michaelos M, Pachitariu M. Cellpose: a generalist algorithm for "
        "cellular segmentation. Nature Methods 18, 100-106 (2021).",
        "10.1038/s41592-020-01018-x",
    ),
    "stardist": (
        "Schmidt U, Weigert M, Broaddus C, Myers G. Cell detection with star-convex polygons. "
        "MICCAI 2018, LNCS 11071, 265-273.",
        "10.1007/978-3-030-00934-2_30",
    ),
}
COVER_SIDE = 256


def citations(backend: str) -> list[tuple[str, str]]:
    """(text, DOI) pairs: the sparse-annotation method, then the backend's network."""
    return [SPARSE_METHOD, *([CITATIONS[backend]] if backend in CITATIONS else [])]


def training_summary(model: TrainedModel) -> dict[str, Any]:
    """What the model was trained on, from its metadata: cells, images, steps, dates."""
    info = model.info
    sessions = info.get("sessions", [])
    last = sessions[-1] if sessions else {}
    return {
        "backend": model.backend,
        "annotated_cells": last.get("annotated_cells"),
        "images": info.get("images"),
        "steps": info.get("steps"),
        "sessions": len(sessions),
        "created": info.get("created"),
        "updated": info.get("updated"),
        "train_diameter_px": model.scale.train_diameter,
        "tuned_annotated_f1": model.thresholds.tuned_annotated_f1,
    }


def write_readme(
    path: Path, model: TrainedModel, network: PackagedNetwork, summary: dict[str, Any], halo: int
) -> None:
    """The package's README.md: input, expected object scale, output, training, validation."""
    d = model.config.target_diameter
    axes = "batch, y, x, channel" if network.channel_last else "batch, channel, y, x"
    trained = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items() if v is not None)
    cites = "\n".join(f"- {text} doi:{doi}" for text, doi in citations(model.backend))
    thresholds = {k: v for k, v in model.thresholds.as_dict().items() if k != "tuned_annotated_f1"}
    text = f"""# {model.name} ({model.backend}, trained with napari-cellsparse)

A {model.backend} model trained from a few annotated cells (sparse annotation: unannotated
pixels were left out of the loss) in the napari plugin napari-cellsparse.

## Input
A 2D image with {model.n_channels} channel(s), raw intensities (axes {axes}).
The package declares the normalisation the model was trained with: per channel, the 1st and
99.8th intensity percentiles of the image are mapped to 0 and 1 (`scale_range`). Height and
width must be multiples of {network.step} pixels.

Tools that cut a large image into tiles should crop {halo} pixels (the output's `halo`) from
each side of a tile: one input pixel changes the output by less than {HALO_SHARE:.0%} of its own
effect beyond that distance.

**Object scale: cells must be about {d:.0f} pixels across.** The model was trained with its
cells rescaled to that diameter, and tools that run this package do not rescale: resize your
image first so that its cells are about {d:.0f} px wide (the test input is at that scale).
napari-cellsparse itself rescales automatically (`cellsparse predict --model model.zip`).

## Output
{network.output_description} Channels: {", ".join(network.output_channels)}; same height and
width as the input. This is the raw network output, as in published StarDist and Cellpose
packages. napari-cellsparse's instance post-processing uses these settings: {thresholds}
(also in this package's `config` under `napari_cellsparse`).

## Training
{trained}.

## Validation
Thresholds were tuned on the annotated pixels only; `tuned_annotated_f1` above is the F1
score of the annotated cells at IoU 0.5 on the training images, not on unseen data. Validate
the model on images of your own with complete annotations before relying on it.

## Citation
{cites}
"""
    path.write_text(text, encoding="utf-8")


def write_cover(path: Path, raw: np.ndarray, output: np.ndarray, backend: str) -> None:
    """A 2:1 PNG: the test input (normalised) beside the network's output on it.

    ``raw`` is (1, C, Y, X); ``output`` (1, K, Y', X'): class logits (U-Net), Cellpose flows,
    or StarDist's probability and distances at its grid points.
    """
    import imageio.v3 as iio
    from skimage.color import hsv2rgb
    from skimage.transform import resize

    image = normalize_percentile(raw[0], axis=(1, 2))
    rgb_in = np.clip(np.moveaxis(image[:3], 0, -1), 0.0, 1.0)
    if rgb_in.shape[-1] == 1:
        rgb_in = np.repeat(rgb_in, 3, axis=-1)
    elif rgb_in.shape[-1] == 2:
        rgb_in = np.concatenate([rgb_in, np.zeros_like(rgb_in[..., :1])], axis=-1)
    out = output[0]
    if backend == "cellpose":
        angle = (np.arctan2(out[0], out[1]) + np.pi) / (2 * np.pi)
        value = 1.0 / (1.0 + np.exp(-out[2]))
        rgb_out = hsv2rgb(np.stack([angle, np.ones_like(angle), value], axis=-1))
    elif backend == "stardist":
        reach = out[1:].mean(axis=0)
        reach = reach / max(float(reach.max()), 1e-6)
        rgb_out = np.clip(np.stack([out[0], reach * out[0], np.zeros_like(reach)], axis=-1), 0, 1)
    else:
        e = np.exp(out - out.max(axis=0, keepdims=True))
        prob = e / e.sum(axis=0, keepdims=True)
        rgb_out = np.stack([prob[1], prob[2], np.zeros_like(prob[0])], axis=-1)
    halves = [resize(x, (COVER_SIDE, COVER_SIDE, 3), order=1) for x in (rgb_in, rgb_out)]
    picture = (np.concatenate(halves, axis=1) * 255).round().astype(np.uint8)
    iio.imwrite(path, picture, extension=".png")
