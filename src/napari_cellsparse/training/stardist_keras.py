"""TensorFlow, Keras and StarDist for the StarDist backend: the quiet lazy import, the device
TensorFlow offers, and the weights file (written atomically, checked whole when read).

Nothing here imports TensorFlow at module import: a missing install is reported cleanly by
:func:`~napari_cellsparse.training.backend.backend_class`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["WEIGHTS_FILE", "gpu_count", "import_tf", "load_weights", "quiet", "save_weights"]

WEIGHTS_FILE = "stardist.weights.h5"  # Keras 3 wants the ".weights.h5" suffix

_TF: Any = None  # the tensorflow module, once imported by import_tf()
_GPUS = 0  # GPUs TensorFlow sees


def import_tf() -> Any:
    """Import TensorFlow, Keras and StarDist with their console chatter turned off.

    ``TF_CPP_MIN_LOG_LEVEL`` does not silence the messages TensorFlow's native code writes
    while it loads (CUDA probing, "log messages before absl::InitializeLog()"), so the
    process' stderr is pointed at /dev/null for the first import only.
    """
    global _TF, _GPUS
    if _TF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # StarDist's NMS uses its own bundled OpenMP runtime, which reads this variable once,
        # when it loads. Busy-waiting threads made the NMS 10-20x slower on a loaded 2-core
        # machine; restore the variable so other OpenMP libraries loaded later are unaffected.
        had_policy = "OMP_WAIT_POLICY" in os.environ
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with _native_stderr_silenced():
            import keras  # noqa: F401
            import stardist.models  # noqa: F401
            import tensorflow as tf

            tf.get_logger().setLevel(logging.ERROR)
            with contextlib.suppress(Exception):
                import absl.logging

                absl.logging.set_verbosity(absl.logging.ERROR)
            _GPUS = len(tf.config.list_physical_devices("GPU"))
        if not had_policy:
            os.environ.pop("OMP_WAIT_POLICY", None)
        _TF = tf
    return _TF


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native libraries write to file descriptor 2 to /dev/null, for a moment."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow StarDist/csbdeep prints (e.g. "Using default values: ...") and their warnings."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        yield


def gpu_count() -> int:
    """GPUs TensorFlow sees (0 before :func:`import_tf`)."""
    return _GPUS


def save_weights(keras_model: Any, folder: Path) -> None:
    """Write ``keras_model``'s weights to ``folder/WEIGHTS_FILE`` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix="-" + WEIGHTS_FILE, dir=folder)
    os.close(fd)
    try:
        with quiet():  # csbdeep warns that Keras 2 cannot read this format
            keras_model.save_weights(tmp, overwrite=True)
        os.replace(tmp, folder / WEIGHTS_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_weights(keras_model: Any, path: Path) -> None:
    """Read every weight of ``keras_model`` from ``path``; raises when any is missing."""
    _check_weight_count(path, len(keras_model.weights))
    with quiet():
        keras_model.load_weights(str(path))


def _check_weight_count(path: Path, expected: int) -> None:
    """Keras may skip entries it does not find: check the file holds every layer weight."""
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
            found.append(name)

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    if len(found) != expected:
        raise ValueError(f"the file holds {len(found)} weight arrays, the network has {expected}")
