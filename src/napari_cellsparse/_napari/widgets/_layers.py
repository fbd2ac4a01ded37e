"""Small helpers the dock widgets share for reading napari layers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ...core.errors import BadInputError

__all__ = [
    "OUTPUT_KEY",
    "PREVIEW_OUTPUT",
    "annotation_choice",
    "compact_labels",
    "image_2d",
    "input_names",
    "is_output",
    "layer_data",
    "mask_of",
    "points_yx",
    "refill_combo",
    "show_layer",
]

# Metadata key of the layers the plugin writes (predictions, the training preview, block-wise
# and folder results, SAM's automatic masks, counts, "where next" maps and places); the value
# says what made it. Widgets never take them as inputs by default.
OUTPUT_KEY = "cellsparse_output"
PREVIEW_OUTPUT = "training preview"  # the value for the live preview of a running training


def is_output(layer: Any) -> bool:
    """Whether the plugin wrote ``layer`` (see :data:`OUTPUT_KEY`)."""
    return OUTPUT_KEY in layer.metadata


def input_names(layers: Iterable[Any], kind: type) -> list[str]:
    """Names of the ``kind`` layers a widget offers as inputs: those the plugin did not write."""
    return [ly.name for ly in layers if isinstance(ly, kind) and not is_output(ly)]


def annotation_choice(layers: Sequence[Any]) -> str | None:
    """The Labels layer a widget offers as the annotation by default: the first named like
    an annotation, else the first that the plugin did not write; None when every Labels layer
    is a result. A prediction is taken as annotation only when a person picks it: its object
    1 would be read as painted background."""
    labels = [ly for ly in layers if type(ly).__name__ == "Labels"]
    named = [ly.name for ly in labels if "annotation" in ly.name.lower()]
    painted = [ly.name for ly in labels if not is_output(ly)]
    return (named or painted or [None])[0]


def show_places(
    viewer: Any,
    doubt: np.ndarray,
    points: np.ndarray,
    names: tuple[str, str],
    image: Any,
    limits: tuple[float, float] = (0.0, 1.0),
    metadata: dict[str, Any] | None = None,
) -> None:
    """A "where next" result over ``image`` (a layer): the ``doubt`` map (magma, added on
    top, ``limits``) and the places (N x 2, y x, best first) numbered; ``names`` are the
    two layers' names, ``metadata`` goes to both (marked as the plugin's output)."""
    where = {
        "scale": image.scale[-2:],
        "translate": image.translate[-2:],
        "made_by": "where to annotate next",
    }
    if metadata is not None:
        where["metadata"] = metadata
    show_layer(
        viewer,
        "image",
        doubt,
        names[0],
        colormap="magma",
        blending="additive",
        contrast_limits=limits,
        **where,
    )
    show_layer(
        viewer,
        "points",
        np.asarray(points, float).reshape(-1, 2),
        names[1],
        features={"rank": np.arange(1, len(points) + 1)},
        text={"string": "{rank}", "color": "cyan", "anchor": "upper_left"},
        face_color="transparent",
        border_color="cyan",
        size=12,
        **where,
    )


def show_layer(
    viewer: Any, kind: str, data: Any, name: str, made_by: str | None = None, **properties: Any
) -> Any:
    """Show ``data`` as the ``kind`` layer ("labels", "image", "points" or "shapes") called
    ``name``, with the layer ``properties`` given as to ``viewer.add_<kind>``; ``made_by``
    marks it as the plugin's result (:data:`OUTPUT_KEY`) from the start, so that widgets
    refreshing their layer lists as it arrives already see it as one.

    A layer of that name, kind and dimensionality is updated in place: removing a layer makes
    napari run a full garbage collection (about 0.1 s of the main thread here) and adding one
    builds its visuals (about 0.07 s), so showing a result again costs a data swap instead.
    An image's contrast limits follow the new data. Any other layer of that name is replaced.
    Shapes ``data`` is a ``(shapes, shape_type)`` pair, so that shapes replaced in place keep
    their type."""
    if made_by is not None:
        properties["metadata"] = {**properties.get("metadata", {}), OUTPUT_KEY: made_by}
    layer = next((layer for layer in viewer.layers if layer.name == name), None)
    if layer is not None and _fits(layer, kind, data):
        if kind == "shapes":  # napari's Shapes.data cannot take more shapes with their type
            layer.data = []
            if len(data[0]):
                layer.add(data[0], shape_type=data[1])
        else:
            layer.data = data
        if kind == "image" and "contrast_limits" not in properties:
            layer.reset_contrast_limits()
        for key, value in properties.items():
            setattr(layer, key, value)
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    if kind == "shapes":  # napari cannot make a Shapes layer of no shapes with their type
        shapes, shape_type = data
        return viewer.add_shapes(
            list(shapes) or None, shape_type=shape_type, name=name, **properties
        )
    return getattr(viewer, f"add_{kind}")(data, name=name, **properties)


def _fits(layer: Any, kind: str, data: Any) -> bool:
    """Whether ``layer`` is a ``kind`` layer that can take ``data`` without changing its
    number of dimensions (and so its scale, translate and the viewer's dims)."""
    if type(layer).__name__.lower() != kind or getattr(layer, "multiscale", False):
        return False
    if kind in ("labels", "image"):
        return getattr(layer, "rgb", False) is False and np.ndim(data) == layer.data.ndim
    if kind == "points":
        return np.asarray(data).ndim == 2 and np.shape(data)[1] == layer.ndim
    shapes = data[0]
    return all(np.shape(shape)[-1] == layer.ndim for shape in shapes)


def layer_data(layer: Any) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale image)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def refill_combo(
    combo: Any,
    names: Sequence[str],
    best: str | None = None,
    select: str | None = None,
    blank: bool = False,
) -> None:
    """Replace a combo box's items, sending no signal; the choice is ``select`` when listed,
    else the current one when still listed, else ``best``, else the first item (``blank``:
    no item, so that nothing is used until a person picks one)."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(names))
    chosen = next((c for c in (select, current, best) if c and c in names), None)
    if chosen is not None:
        combo.setCurrentText(chosen)
    elif blank:
        combo.setCurrentIndex(-1)
    combo.blockSignals(False)


def compact_labels(labels: Any, viewer: Any = None) -> Any:
    """A label array as uint8 or uint16 when its ids fit: napari draws those faster than
    int32 or int64 (less main-thread work when a layer is shown). The type of a Labels layer
    already in ``viewer`` is preferred when it holds them: napari compiles its colour mapping
    once per type, about 0.2 s of the main thread the first time a type is shown. Other
    arrays (zarr, dask) as they are."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        return labels
    top = int(labels.max()) if labels.size else 0
    if int(labels.min(initial=0)) < 0:
        return labels
    small = (np.dtype(np.uint8), np.dtype(np.uint16))
    shown = [
        np.dtype(layer.data.dtype)
        for layer in getattr(viewer, "layers", ())
        if type(layer).__name__ == "Labels" and np.dtype(layer.data.dtype) in small
    ]
    for dtype in (*shown, *small):
        if top <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    return labels


def mask_of(layer: Any, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask from a Labels layer (1 = background in a sparse annotation, else any
    label) or a Shapes layer (inside any shape)."""
    if type(layer).__name__ == "Shapes":
        if not len(layer.data):
            return np.zeros(shape, bool)
        return np.asarray(layer.to_masks(mask_shape=shape)).any(0)
    data = np.asarray(layer.data)
    if data.shape[-2:] != shape:
        raise BadInputError(
            f"The layer '{layer.name}' {data.shape} does not cover the image {shape}."
        )
    data = data.reshape(-1, *shape)[0] if data.ndim > 2 else data
    return data == 1 if data.max() > 1 else data > 0


def points_yx(points: Any, image: Any) -> np.ndarray:
    """The points' (y, x) in the image's pixel coordinates (scale and translate applied)."""
    data = np.asarray(points.data, np.float64).reshape(-1, points.ndim)[:, -2:]
    world = data * np.asarray(points.scale[-2:]) + np.asarray(points.translate[-2:])
    return (world - np.asarray(image.translate[-2:])) / np.asarray(image.scale[-2:])


def image_2d(layer: Any) -> np.ndarray:
    """A 2D image (YX, or YXC for RGB) from an Image layer, with a clear error for stacks."""
    data = layer_data(layer)
    if data.ndim != (3 if layer.rgb else 2):
        raise BadInputError(
            f"'{layer.name}' is not a 2D image (shape {data.shape}); count one slice at a time."
        )
    return np.asarray(data)
