"""The StarDist 2D backend (TensorFlow/Keras): upstream StarDist trained on sparse crops.

The network, its losses and its post-processing are upstream ``stardist`` (not a fork). We
only drive the training ourselves, one step at a time: every step takes augmented crops from
the :class:`~napari_cellsparse.training.sampling.SparseDataset`, builds the targets with
upstream :class:`stardist.models.model2d.StarDistData2D` (which turns negative labels into
``prob = -1``, left out of the probability loss, and a zero distance weight, left out of the
distance loss) and calls ``keras_model.train_on_batch``. TensorFlow and StarDist are imported
inside methods only, so a missing install is reported cleanly by ``backend_class``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import BadInputError, WeightsError
from ..core.sparse_labels import IGNORE
from .backend import Network
from .evaluate import annotated_f1
from .sampling import Batch, SparseDataset

__all__ = ["WEIGHTS_FILE", "StarDistNetwork"]

WEIGHTS_FILE = "stardist.weights.h5"  # Keras 3 wants the ".weights.h5" suffix

# Config keys that define the network's shape (copied from a pretrained model's config).
ARCHITECTURE_KEYS = ("n_rays", "grid", "unet_n_depth", "unet_n_filter_base", "net_conv_after_unet")

# Prediction tiles are at most this many pixels a side (bounds memory on large images).
MAX_TILE = 1024

# Threshold grids searched by tune(): a coarse pass over prob_thresh, then a finer one.
NMS_GRID = (0.3, 0.4, 0.5)
PROB_COARSE = tuple(round(0.1 * i, 2) for i in range(1, 10))
PROB_FINE_OFFSETS = (-0.075, -0.05, -0.025, 0.025, 0.05, 0.075)

_TF: Any = None  # the tensorflow module, once imported by _import_tf()
_GPUS = 0  # GPUs TensorFlow sees


def _import_tf() -> Any:
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
def _quiet() -> Iterator[None]:
    """Swallow StarDist/csbdeep prints (e.g. "Using default values: ...") and their warnings."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        yield


class StarDistNetwork(Network):
    """Upstream StarDist 2D (star-convex polygons), trained with the ignore mask respected."""

    name = "stardist"
    title = "StarDist 2D (TensorFlow)"
    requires = ("stardist", "tensorflow")
    extra = "stardist"
    # Upstream's network size: a 16-filter variant was 2.8x faster per step on a 2-core CPU
    # but clearly worse for the same training time (real nuclei, sparse annotation: F1 0.76
    # after 600 steps vs 0.84 after 300 of these). Upstream's rate (3e-4) is made for
    # 40,000 steps; 1e-3 learns much faster in the few hundred steps a CPU can afford.
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 280,  # about 3 minutes of training on a 2-core laptop CPU
        "n_rays": 32,
        "grid": [2, 2],
        "unet_n_depth": 3,
        "unet_n_filter_base": 32,
        "net_conv_after_unet": 128,
        "learning_rate": 1e-3,
        "pretrained": None,
        "prob_thresh": 0.5,
        "nms_thresh": 0.4,
    }
    weight_files = (WEIGHTS_FILE,)

    def __init__(self, config: dict[str, Any], n_channels: int, device: str | None) -> None:
        super().__init__(config, n_channels, device)
        self.model: Any = None
        self._tf_device = "/CPU:0"
        self._requested_device = device
        self._compiled_lr: float | None = None

    # -- construction -------------------------------------------------------------------

    def _resolve_device(self) -> None:
        """Use TensorFlow's first GPU unless the CPU was asked for; say which one runs."""
        requested = (self._requested_device or "auto").lower()
        if _GPUS and not requested.startswith("cpu"):
            self._tf_device, self.device = "/GPU:0", "gpu:0"
        else:
            self._tf_device, self.device = "/CPU:0", "cpu"

    def _patch_size(self) -> int:
        """The configured patch size rounded up to what the U-Net can take (grid * 2**depth)."""
        div = max(int(g) for g in self.config["grid"]) * 2 ** int(self.config["unet_n_depth"])
        return int(math.ceil(int(self.config["patch_size"]) / div) * div)

    def _stardist_config(self) -> Any:
        """Upstream ``Config2D`` made from our config (in memory, no TensorBoard, no callbacks)."""
        from stardist.models import Config2D

        patch = self._patch_size()
        return Config2D(
            n_rays=int(self.config["n_rays"]),
            grid=tuple(int(g) for g in self.config["grid"]),
            n_channel_in=self.n_channels,
            unet_n_depth=int(self.config["unet_n_depth"]),
            unet_n_filter_base=int(self.config["unet_n_filter_base"]),
            net_conv_after_unet=int(self.config["net_conv_after_unet"]),
            train_patch_size=(patch, patch),
            train_batch_size=int(self.config["batch_size"]),
            train_learning_rate=float(self.config["learning_rate"]),
            train_tensorboard=False,
            train_reduce_lr=None,
        )

    def _new_model(self) -> Any:
        """A StarDist2D with this config's architecture, fresh weights seeded by ``seed``."""
        tf = _import_tf()
        self._resolve_device()
        import keras
        from stardist.models import StarDist2D

        # Seed TensorFlow/Keras for reproducible weights without disturbing the caller's
        # global numpy and random streams.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            keras.utils.set_random_seed(int(self.config.get("seed", 0)))
            with _quiet(), tf.device(self._tf_device):
                model = StarDist2D(self._stardist_config(), name="cellsparse", basedir=None)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        self._compiled_lr = None
        return model

    def build(self) -> None:
        """Fresh weights, or those of the registered StarDist model named by ``pretrained``."""
        name = self.config.get("pretrained")
        if not name:
            self.model = self._new_model()
            return
        source = self._pretrained(str(name))
        channels = int(source.config.n_channel_in)
        if channels != self.n_channels:
            raise BadInputError(
                f"The pretrained StarDist model {name!r} takes {channels} channel(s) but the "
                f"images have {self.n_channels}; train from scratch (pretrained: none) instead."
            )
        for key in ARCHITECTURE_KEYS:
            value = getattr(source.config, key)
            self.config[key] = [int(v) for v in value] if key == "grid" else int(value)
        # The model's own tuned thresholds are a better start than the generic ones.
        self.config["prob_thresh"] = float(source.thresholds.prob)
        self.config["nms_thresh"] = float(source.thresholds.nms)
        self.model = self._new_model()
        try:
            self.model.keras_model.set_weights(source.keras_model.get_weights())
        except ValueError as err:
            raise WeightsError(
                f"The pretrained StarDist model {name!r} has an architecture this plugin does "
                f"not rebuild ({err}); train from scratch instead."
            ) from err

    @staticmethod
    def pretrained_models() -> list[str]:
        """Names (and aliases) of the pretrained StarDist 2D models, for ``pretrained``."""
        _import_tf()
        from csbdeep.models.pretrained import get_registered_models
        from stardist.models import StarDist2D

        with _quiet():
            keys, aliases = get_registered_models(StarDist2D)
        return sorted({*keys, *(a for names in aliases.values() for a in names)})

    def _pretrained(self, name: str) -> Any:
        """Upstream ``StarDist2D.from_pretrained`` with clear errors (unknown name, offline)."""
        from stardist.models import StarDist2D

        known = self.pretrained_models()
        if name not in known:
            raise BadInputError(
                f"Unknown pretrained StarDist model {name!r}; choose one of: {', '.join(known)}."
            )
        try:
            with _quiet():
                model = StarDist2D.from_pretrained(name)
        except Exception as err:
            raise WeightsError(
                f"Could not get the pretrained StarDist model {name!r} ({err}). It is "
                "downloaded once from the internet (then cached in ~/.keras/models); connect "
                "to the internet once, or train from scratch (pretrained: none)."
            ) from err
        if model is None:
            raise WeightsError(f"StarDist could not load the pretrained model {name!r}.")
        return model

    def _require_model(self) -> Any:
        if self.model is None:
            raise RuntimeError("Call build() or load() before using the network.")
        return self.model

    # -- training -----------------------------------------------------------------------

    def targets(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upstream StarDist targets of a batch: images, ``prob`` (-1 = ignored), dist + mask."""
        from stardist.models.model2d import StarDistData2D

        model = self._require_model()
        n, h, w = batch.labels.shape
        with _quiet():
            data = StarDistData2D(
                list(batch.images),
                list(batch.labels),
                batch_size=n,
                n_rays=int(model.config.n_rays),
                length=1,
                patch_size=(h, w),
                grid=tuple(model.config.grid),
                shape_completion=False,
                augmenter=None,
                foreground_prob=0,
            )
            (x,), (prob, dist) = data[0]
        return x, prob, dist

    def _prepare(self) -> None:
        """Compile with upstream losses (``prepare_for_training``) at the configured rate."""
        model = self._require_model()
        lr = float(self.config["learning_rate"])
        if self._compiled_lr == lr:
            return
        model.config.train_learning_rate = lr
        model.config.train_batch_size = int(self.config["batch_size"])
        tf = _import_tf()
        with _quiet(), tf.device(self._tf_device):
            model.prepare_for_training()
        self._compiled_lr = lr

    def train_steps(
        self, data: SparseDataset, steps: int, rng: np.random.Generator
    ) -> Iterator[dict[str, float]]:
        """``steps`` optimiser steps on fresh crops; yields the batch losses after each."""
        model = self._require_model()
        if data.n_channels != self.n_channels:
            raise BadInputError(
                f"The images have {data.n_channels} channel(s); this model takes {self.n_channels}."
            )
        self._prepare()
        tf = _import_tf()
        patch, batch_size = self._patch_size(), int(self.config["batch_size"])
        for _ in range(steps):
            x, prob, dist = self.targets(data.sample_batch(rng, batch_size, patch))
            for _retry in range(20):
                # The probability loss averages over annotated grid points: a batch without
                # any (a tiny annotation, all crops landing between grid points) gives NaN.
                if (prob >= 0).any():
                    break
                x, prob, dist = self.targets(data.sample_batch(rng, batch_size, patch))
            else:
                raise BadInputError(
                    "The annotation is too small to train StarDist on: paint whole cells and "
                    "some background around them."
                )
            with tf.device(self._tf_device):
                logs = model.keras_model.train_on_batch([x], (prob, dist), return_dict=True)
            yield {
                "loss": float(logs["loss"]),
                "prob_loss": float(logs.get("prob_loss", np.nan)),
                "dist_loss": float(logs.get("dist_loss", np.nan)),
            }

    # -- prediction ---------------------------------------------------------------------

    def _n_tiles(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        return (max(1, math.ceil(shape[0] / MAX_TILE)), max(1, math.ceil(shape[1] / MAX_TILE)), 1)

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[-1] != self.n_channels:
            raise BadInputError(
                f"Expected a YXC image with {self.n_channels} channel(s), got shape {image.shape}."
            )
        return image

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Object probability (Y/g, X/g) and ray distances (Y/g, X/g, n_rays) of an image."""
        model = self._require_model()
        image = self._check_image(image)
        tf = _import_tf()
        with tf.device(self._tf_device):
            prob, dist = model.predict(
                image,
                axes="YXC",
                normalizer=None,
                n_tiles=self._n_tiles(image.shape),
                show_tile_progress=False,
                verbose=0,
            )
        return prob, dist

    def instances(
        self,
        shape: tuple[int, int],
        prob: np.ndarray,
        dist: np.ndarray,
        prob_thresh: float,
        nms_thresh: float,
    ) -> np.ndarray:
        """Upstream NMS and polygon rendering of a dense prediction at given thresholds."""
        model = self._require_model()
        labels, _ = model._instances_from_prediction(
            shape, prob, dist, prob_thresh=prob_thresh, nms_thresh=nms_thresh
        )
        return np.asarray(labels, np.int32)

    def tune(self, data: SparseDataset) -> dict[str, Any]:
        """Pick ``prob_thresh``/``nms_thresh`` with the best F1 on the annotated pixels.

        The network runs once per image; only upstream's NMS and polygon step are repeated
        per threshold, and only for candidates close enough to an annotated pixel to overlap
        it (the others cannot change the annotated F1).
        """
        predictions = []
        for image, internal in zip(data.images, data.labels, strict=True):
            prob, dist = self.probabilities(image)
            near = _near_annotation(prob, dist, internal, tuple(self.config["grid"]))
            predictions.append((image.shape[:2], near, dist))
        scores: dict[tuple[float, float], float] = {}

        def score(p: float, nms: float) -> float:
            key = (round(p, 3), nms)
            if key in scores:
                return scores[key]
            # An undertrained network makes nearly every pixel a candidate with large
            # polygons, and the NMS then takes seconds per image for a useless answer.
            if any(int((pr > key[0]).sum()) > _max_candidates(pr) for _, pr, _ in predictions):
                scores[key] = 0.0
            else:
                preds = [self.instances(s, pr, di, key[0], nms) for s, pr, di in predictions]
                scores[key] = annotated_f1(preds, data.labels)
            return scores[key]

        def choice() -> tuple[float, float, list[float]]:
            best = max(scores.values())
            tied = [k for k, v in scores.items() if v >= best - 1e-9]
            # Prefer upstream's nms 0.4 among equals, and the middle of the prob plateau.
            nms = min({k[1] for k in tied}, key=lambda t: (abs(t - 0.4), t))
            return best, nms, sorted(k[0] for k in tied if k[1] == nms)

        for nms in NMS_GRID:
            for p in PROB_COARSE:
                score(p, nms)
        best, nms, plateau = choice()
        if best <= 0.0:  # nothing found at any threshold: nothing to judge by, keep them
            return {"tuned_annotated_f1": 0.0}
        for edge in sorted({plateau[0], plateau[-1]}):
            for offset in PROB_FINE_OFFSETS:
                if 0.0 < edge + offset < 1.0:
                    score(edge + offset, nms)
        best, nms, plateau = choice()
        prob = plateau[len(plateau) // 2]
        self.config.update(prob_thresh=float(prob), nms_thresh=float(nms))
        return {"prob_thresh": float(prob), "nms_thresh": float(nms), "tuned_annotated_f1": best}

    def predict_scaled(self, image: np.ndarray) -> np.ndarray:
        """Instance labels (int32, 0 = background) with the tuned thresholds."""
        model = self._require_model()
        image = self._check_image(image)
        tf = _import_tf()
        with tf.device(self._tf_device):
            labels, _ = model.predict_instances(
                image,
                axes="YXC",
                normalizer=None,
                prob_thresh=float(self.config["prob_thresh"]),
                nms_thresh=float(self.config["nms_thresh"]),
                n_tiles=self._n_tiles(image.shape),
                show_tile_progress=False,
                verbose=False,
                predict_kwargs={"verbose": 0},
            )
        return np.asarray(labels, np.int32)

    # -- weights ------------------------------------------------------------------------

    def weights_finite(self) -> bool:
        model = self._require_model()
        return all(bool(np.isfinite(w).all()) for w in model.keras_model.get_weights())

    def save(self, folder: Path) -> None:
        """Write the Keras weights to ``folder/stardist.weights.h5`` (atomically)."""
        model = self._require_model()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", suffix="-" + WEIGHTS_FILE, dir=folder)
        os.close(fd)
        try:
            with _quiet():  # csbdeep warns that Keras 2 cannot read this format
                model.keras_model.save_weights(tmp, overwrite=True)
            os.replace(tmp, folder / WEIGHTS_FILE)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def load(self, folder: Path) -> None:
        """Rebuild the network from the config and read its weights; WeightsError if unusable."""
        path = Path(folder) / WEIGHTS_FILE
        if not path.is_file():
            raise WeightsError(f"The model folder {folder} has no weights file {WEIGHTS_FILE}.")
        model = self._new_model()
        expected = len(model.keras_model.weights)
        try:
            _check_weight_count(path, expected)
            with _quiet():
                model.keras_model.load_weights(str(path))
        except Exception as err:
            raise WeightsError(
                f"{path} is damaged or belongs to a differently configured StarDist network "
                f"and cannot be loaded ({err})."
            ) from err
        self.model = model


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


def _max_candidates(near_prob: np.ndarray) -> int:
    """Most NMS candidates worth trying: half the grid points near the annotation."""
    return max(2000, int(0.5 * np.count_nonzero(near_prob)))


def _near_annotation(
    prob: np.ndarray, dist: np.ndarray, internal: np.ndarray, grid: tuple[int, ...]
) -> np.ndarray:
    """``prob`` set to 0 where a polygon could not reach an annotated pixel (faster NMS)."""
    from scipy import ndimage as ndi

    away = ndi.distance_transform_edt(internal == IGNORE)
    rows = np.minimum(np.arange(prob.shape[0]) * int(grid[0]), internal.shape[0] - 1)
    cols = np.minimum(np.arange(prob.shape[1]) * int(grid[1]), internal.shape[1] - 1)
    reach = float(dist.max()) + 2.0 if dist.size else 0.0
    return np.where(away[np.ix_(rows, cols)] <= reach, prob, 0.0).astype(prob.dtype)
