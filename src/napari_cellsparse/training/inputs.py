"""Turn what users pass (single arrays, lists, stacks, channel axes) into 2D YXC slices.

Training accepts one array or a list of arrays for both images and annotations; a stack is
split into its slices (only slices with some annotation are kept), and a channel axis is found
by comparing the image's shape with its annotation's. Prediction uses ``axes`` (e.g. "ZYX",
"TYX", "CYX", "YXC", "ZYXC") when the shape alone is ambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import BadInputError
from ..core.images import MAX_CHANNELS, as_list, as_yxc, guess_axes
from ..core.sparse_labels import IGNORE, check_annotation, to_internal

__all__ = ["prediction_slices", "training_pairs"]


def _image_as_stack(image: np.ndarray, label_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Image → (N, Y, X, C) matching annotation slices (N, Y, X)."""
    if image.shape == label_shape:
        data = image[..., None]
    elif image.ndim == len(label_shape) + 1 and image.shape[:-1] == label_shape:
        data = image
    elif image.ndim == len(label_shape) + 1 and image.shape[1:] == label_shape:
        data = np.moveaxis(image, 0, -1)
    else:
        raise BadInputError(
            f"{what}: the annotation has shape {label_shape} but the image has {image.shape}; "
            "they must cover the same pixels (an extra channel axis first or last is allowed)."
        )
    if len(label_shape) == 2:
        data = data[None]
    if data.shape[-1] > MAX_CHANNELS:
        raise BadInputError(f"{what}: at most {MAX_CHANNELS} channels, got {data.shape[-1]}.")
    return data


def training_pairs(
    images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated (YXC image, internal labels) 2D pairs with some annotation each."""
    image_list = as_list(images, "images")
    label_list = as_list(labels, "annotations")
    if len(image_list) != len(label_list):
        raise BadInputError(
            f"Got {len(image_list)} image(s) but {len(label_list)} annotation(s); "
            "give one annotation per image."
        )
    pairs = []
    for k, (image, annotation) in enumerate(zip(image_list, label_list, strict=True)):
        what = f"Image {k + 1}" if len(image_list) > 1 else "The image"
        if annotation.ndim not in (2, 3):
            raise BadInputError(
                f"{what}: annotations must be 2D (YX) or a stack (ZYX), got {annotation.shape}."
            )
        internal = to_internal(annotation)
        stack = _image_as_stack(image, internal.shape, what)
        slices = internal if internal.ndim == 3 else internal[None]
        for img, lab in zip(stack, slices, strict=True):
            if not (lab == IGNORE).all():
                pairs.append((as_yxc(img), lab))
    if not pairs:
        raise BadInputError(
            "Nothing is annotated: paint some cells (labels 2, 3, ...) and some background "
            "(label 1) in the annotation layer."
        )
    channels = {p[0].shape[-1] for p in pairs}
    if len(channels) > 1:
        raise BadInputError(f"All images must have the same number of channels, got {channels}.")
    everything = np.concatenate([lab.ravel() for _, lab in pairs])
    check_annotation(everything.shape, everything, "The annotations")
    return pairs


def prediction_slices(
    image: np.ndarray, n_channels: int, axes: str | None = None
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Split an image into 2D YXC slices for a model with ``n_channels``; also the label shape.

    Without ``axes``: YX; YXC when the last axis has the model's channel count (<= 4); CYX when
    the first one has and the last is long; otherwise a 3D array is a stack (ZYX) of a
    one-channel model. Anything else needs ``axes``.
    """
    data = np.asarray(image)
    if data.size == 0:
        raise BadInputError("The image is empty.")
    if axes is None:
        axes = guess_axes(data.shape, n_channels)
    axes = axes.upper()
    if len(axes) != data.ndim or set(axes) - set("TZCYX") or len(set(axes)) != len(axes):
        raise BadInputError(
            f"axes={axes!r} does not describe an image of shape {data.shape} "
            "(use letters from T, Z, C, Y, X, one per dimension)."
        )
    if "Y" not in axes or "X" not in axes:
        raise BadInputError(f"axes={axes!r} must contain Y and X.")
    stack_axes = [a for a in axes if a in "TZ"]
    order = stack_axes + ["Y", "X"] + (["C"] if "C" in axes else [])
    data = np.transpose(data, [axes.index(a) for a in order])
    if "C" not in axes:
        data = data[..., None]
    if data.shape[-1] != n_channels:
        raise BadInputError(
            f"The model was trained on {n_channels}-channel images; this image has "
            f"{data.shape[-1]} channel(s) (axes {axes})."
        )
    label_shape = data.shape[:-1]
    flat = data.reshape((-1, *data.shape[-3:]))
    return [as_yxc(s) for s in flat], tuple(label_shape)
