"""StarDist in a bioimage.io package: the Keras network with its outputs as published StarDist
packages have them, its weight files, and reading the weights back.

The packaged network is upstream StarDist's ``export_TF(single_output=True,
upsample_grid=True)`` network: our trained Keras model (nested, unchanged) followed by the
grid upsampling (probability by a transposed convolution of ones, so it is zero between grid
points; distances by repetition) and one output, probability then ray distances, channel last,
the input's height and width. It is written as a Keras v3 file (the original weights) and as a
TensorFlow SavedModel bundle converted from it. TensorFlow is imported inside functions only:
this module runs in the worker or a child process, never beside a viewer.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import BadInputError
from ...core.images import normalize_percentile
from ..model import TrainedModel
from .networks import measured_halo

__all__ = [
    "KERAS_FILE",
    "SAVED_MODEL_FILE",
    "grid_values",
    "load_stardist_weights",
    "write_weights",
]

KERAS_FILE = "stardist.keras"
SAVED_MODEL_FILE = "tf_saved_model.zip"
WRAPPER_NAME = "stardist_bioimageio"
OUTPUT_NAME = "output"  # the SavedModel signature's output, the package's output tensor


def _packaged(model: TrainedModel) -> Any:
    """The Keras network of the package around ``model``'s trained StarDist network."""
    import keras

    inner = model.network.model.keras_model
    grid = tuple(int(g) for g in model.network.config.grid)
    raw = keras.Input((None, None, model.n_channels), name="raw")
    prob, dist = inner(raw)
    if any(g > 1 for g in grid):
        prob = keras.layers.Conv2DTranspose(
            1,
            (1, 1),
            strides=grid,
            padding="same",
            kernel_initializer="ones",
            use_bias=False,
            trainable=False,
            name="upsample_probability",
        )(prob)
        dist = keras.layers.UpSampling2D(grid, name="upsample_distances")(dist)
    out = keras.layers.Concatenate(name="output")([prob, dist])
    return keras.Model(raw, out, name=WRAPPER_NAME)


def write_weights(
    model: TrainedModel, raw: np.ndarray, work: Path, step: int
) -> tuple[dict[str, Path], np.ndarray, int]:
    """Write the Keras v3 file and the zipped SavedModel into ``work``; the packaged network's
    output (1, Y, X, 1 + n_rays) for the raw (1, Y, X, C) test input, normalised as declared,
    and its halo (``measured_halo``)."""
    from ..stardist_keras import import_tf, quiet

    tf = import_tf()
    network = _packaged(model)
    files = {
        "keras_v3": work / KERAS_FILE,
        "tensorflow_saved_model_bundle": work / SAVED_MODEL_FILE,
    }
    with quiet():
        network.save(files["keras_v3"])
        bundle = Path(tempfile.mkdtemp(prefix="saved-model-", dir=work))
        _export_saved_model(network, model.n_channels, bundle / "model", tf)
    with zipfile.ZipFile(files["tensorflow_saved_model_bundle"], "w", zipfile.ZIP_DEFLATED) as z:
        root = bundle / "model"
        for path in sorted(root.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(root).as_posix())
    shutil.rmtree(bundle)
    normalized = normalize_percentile(raw, axis=(1, 2))
    output = np.asarray(network.predict(normalized, verbose=0), np.float32)

    def forward(x: np.ndarray) -> np.ndarray:
        out = network.predict(np.moveaxis(x, 1, -1), verbose=0)
        return np.moveaxis(np.asarray(out, np.float32), -1, 1)

    return files, output, measured_halo(forward, np.moveaxis(raw, -1, 1), step)


def _export_saved_model(network: Any, n_channels: int, folder: Path, tf: Any) -> None:
    """A SavedModel whose "serve" signature maps ``raw`` to ``{"output": ...}`` (the named
    outputs TensorFlow consumers of bioimage.io packages read)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(
        name="serve",
        fn=lambda raw: {OUTPUT_NAME: network(raw, training=False)},
        input_signature=[tf.TensorSpec((None, None, None, n_channels), tf.float32, name="raw")],
    )
    archive.write_out(str(folder), verbose=False)


def grid_values(output: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The packaged output (1, Y, X, K) at the grid points, channel first: (K, Y/g, X/g)."""
    return np.moveaxis(output[0, :: grid[0], :: grid[1]], -1, 0)


def load_stardist_weights(descr: Any, network: Any, path: Path) -> None:
    """Give ``network`` (a StarDistNetwork) the weights of the package's Keras v3 file."""
    from ..stardist_keras import import_tf, quiet

    entry = descr.weights.keras_v3
    if entry is None:
        raise BadInputError(f"{path} has no Keras v3 weights (the StarDist network).")
    import_tf()
    import keras

    with tempfile.TemporaryDirectory(prefix="cellsparse-keras-") as folder:
        local = Path(folder) / KERAS_FILE
        with local.open("wb") as f:
            shutil.copyfileobj(entry.get_reader(), f)
        try:
            with quiet():
                packaged = keras.models.load_model(local, compile=False)
        except Exception as err:
            raise BadInputError(f"{path} holds a Keras file that cannot be read ({err}).") from err
    inner = [layer for layer in packaged.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise BadInputError(
            f"{path} does not hold a StarDist network exported by napari-cellsparse."
        )
    network.set_weights(inner[0].get_weights())
