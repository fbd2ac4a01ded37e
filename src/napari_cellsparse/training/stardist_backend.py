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
import math
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError, WeightsError
from ..models.prefetch import prefetched
from ..models.schedule import one_cycle_rate
from ..models.weight_average import WeightAverage
from .backend import Network
from .config import StarDistConfig, StarDistThresholds
from .sampling import Batch, SparseDataset
from .stardist_keras import WEIGHTS_FILE, gpu_count, import_tf, load_weights, quiet, save_weights
from .stardist_tuning import search_thresholds

__all__ = ["WEIGHTS_FILE", "StarDistNetwork"]

# Config keys that define the network's shape (copied from a pretrained model's config).
ARCHITECTURE_KEYS = ("n_rays", "grid", "unet_n_depth", "unet_n_filter_base", "net_conv_after_unet")

# The share of a session's steps warming the rate up (one_cycle).
WARMUP = 0.1

# Prediction tiles are at most this many pixels a side (bounds memory on large images).
MAX_TILE = 1024


class StarDistNetwork(Network):
    """Upstream StarDist 2D (star-convex polygons), trained with the ignore mask respected."""

    name = "stardist"
    title = "StarDist 2D (TensorFlow)"
    requires = ("stardist", "tensorflow")
    extra = "stardist"
    config_class = StarDistConfig
    thresholds_class = StarDistThresholds
    config: StarDistConfig
    thresholds: StarDistThresholds
    weight_files = (WEIGHTS_FILE,)

    def __init__(
        self,
        config: StarDistConfig,
        n_channels: int,
        device: str | None,
        thresholds: StarDistThresholds | None = None,
    ) -> None:
        super().__init__(config, n_channels, device, thresholds)
        self.model: Any = None
        self._tf_device = "/CPU:0"
        self._requested_device = device
        self._compiled_lr: float | None = None
        self._fresh_heads = False  # output layers not yet started at the annotation's average

    # -- construction -------------------------------------------------------------------

    def _resolve_device(self) -> None:
        """Use TensorFlow's first GPU unless the CPU was asked for; say which one runs."""
        requested = (self._requested_device or "auto").lower()
        if gpu_count() and not requested.startswith("cpu"):
            self._tf_device, self.device = "/GPU:0", "gpu:0"
        else:
            self._tf_device, self.device = "/CPU:0", "cpu"

    @classmethod
    def load_framework(cls) -> None:
        """TensorFlow, Keras and StarDist, quietly (5-8 s on a 2-core laptop CPU)."""
        import_tf()

    def _patch_size(self) -> int:
        """The configured patch size rounded up to what the U-Net can take (grid * 2**depth)."""
        div = max(self.config.grid) * 2**self.config.unet_n_depth
        return int(math.ceil(self.config.patch_size / div) * div)

    def _stardist_config(self) -> Any:
        """Upstream ``Config2D`` made from our config (in memory, no TensorBoard, no callbacks)."""
        from stardist.models import Config2D

        patch = self._patch_size()
        return Config2D(
            n_rays=self.config.n_rays,
            grid=self.config.grid,
            n_channel_in=self.n_channels,
            unet_n_depth=self.config.unet_n_depth,
            unet_n_filter_base=self.config.unet_n_filter_base,
            net_conv_after_unet=self.config.net_conv_after_unet,
            train_patch_size=(patch, patch),
            train_batch_size=self.config.batch_size,
            train_learning_rate=self.config.learning_rate,
            train_loss_weights=(1.0, self.config.dist_loss_weight),
            train_tensorboard=False,
            train_reduce_lr=None,
        )

    def _new_model(self) -> Any:
        """A StarDist2D with this config's architecture, fresh weights seeded by ``seed``."""
        tf = import_tf()
        self._resolve_device()
        import keras
        from stardist.models import StarDist2D

        # Seed TensorFlow/Keras for reproducible weights without disturbing the caller's
        # global numpy and random streams.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            keras.utils.set_random_seed(self.config.seed)
            with quiet(), tf.device(self._tf_device):
                model = StarDist2D(self._stardist_config(), name="cellsparse", basedir=None)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        self._compiled_lr = None
        return model

    def build(self) -> None:
        """Fresh weights, or those of the registered StarDist model named by ``pretrained``
        (whose architecture and thresholds then replace this network's)."""
        name = self.config.pretrained
        if not name:
            self.model = self._new_model()
            self._fresh_heads = True
            return
        source = self._pretrained(str(name))
        channels = int(source.config.n_channel_in)
        if channels != self.n_channels:
            raise BadInputError(
                f"The pretrained StarDist model {name!r} takes {channels} channel(s) but the "
                f"images have {self.n_channels}; train from scratch (pretrained: none) instead."
            )
        shape = {key: getattr(source.config, key) for key in ARCHITECTURE_KEYS}
        self.config = self.config_class.from_settings(**{**self.config.as_dict(), **shape})
        # The model's own tuned thresholds are a better start than the generic ones.
        self.thresholds = replace(
            self.thresholds,
            prob_thresh=float(source.thresholds.prob),
            nms_thresh=float(source.thresholds.nms),
        )
        self.model = self._new_model()
        self._fresh_heads = False
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
        import_tf()
        from csbdeep.models.pretrained import get_registered_models
        from stardist.models import StarDist2D

        with quiet():
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
            with quiet():
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
        """Upstream StarDist targets of a batch, in the batch's order: images, ``prob`` (-1 =
        ignored), dist + mask."""
        from stardist.models.model2d import StarDistData2D

        model = self._require_model()
        n, h, w = batch.labels.shape
        # No quiet() here: it swaps process-wide state and this runs in the prefetch thread
        # (the data sequence prints nothing for these arguments).
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
        # The sequence shuffles the batch with numpy's global, unseeded generator; put the
        # crops back in our order so that a seed gives the same model in every process.
        back = np.argsort(data.batch(0))
        (x,), (prob, dist) = data[0]
        return x[back], prob[back], dist[back]

    def _prepare(self) -> None:
        """Compile with upstream losses (``prepare_for_training``) at the configured rate."""
        model = self._require_model()
        lr = self.config.learning_rate
        if self._compiled_lr == lr:
            return
        model.config.train_learning_rate = lr
        model.config.train_batch_size = self.config.batch_size
        tf = import_tf()
        with quiet(), tf.device(self._tf_device):
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
        tf = import_tf()
        rate = model.keras_model.optimizer.learning_rate
        lr = self.config.learning_rate
        rate.assign(lr)
        average = self.weight_average(steps, self.config.average_tail)
        # closed with this generator (Stop, an error, a new annotation): the thread making
        # the next batch ends before anything else uses ``rng``
        with contextlib.closing(
            prefetched(lambda: self._training_batch(data, rng), steps)
        ) as batches:
            for step, (x, prob, dist) in enumerate(batches):
                if self.config.one_cycle:
                    rate.assign(one_cycle_rate(step, steps, lr, WARMUP))
                if self._fresh_heads:
                    self._start_heads(prob, dist)
                with tf.device(self._tf_device):
                    logs = model.keras_model.train_on_batch([x], (prob, dist), return_dict=True)
                average.after_step(step)
                yield {
                    "loss": float(logs["loss"]),
                    "prob_loss": float(logs.get("prob_loss", np.nan)),
                    "dist_loss": float(logs.get("dist_loss", np.nan)),
                }

    def weight_average(self, steps: int, tail: float) -> WeightAverage:
        """Averages the Keras model's weights (upstream StarDist has no batch
        normalisation: every weight is learnt) over the last ``tail`` share of ``steps``."""
        keras_model = self._require_model().keras_model

        def read() -> dict[int, np.ndarray]:
            return dict(enumerate(keras_model.get_weights()))

        def write(mean: dict[int, np.ndarray]) -> None:
            keras_model.set_weights([mean[i] for i in range(len(mean))])

        return WeightAverage(read, write, steps, tail)

    def _start_heads(self, prob: np.ndarray, dist: np.ndarray) -> None:
        """Start fresh output layers at the batch's average: every ray at the cells' mean ray
        length, the probability at the annotated share of it.

        Fresh, they output rays of 0 px for cells whose rays are about half the training
        diameter: the distance loss (about 14 against the probability's 0.69) then dominated
        the first steps so strongly that the probability output stopped depending on the
        image, and in 3 of 6 runs of 200 steps (user story and full annotation) it never
        recovered: the model found no cell at all, on its own training images neither.
        """
        model = self._require_model().keras_model
        n_rays = int(self.config.n_rays)
        inside = prob[..., 0] > 0
        if inside.any():
            ray = float(dist[..., :n_rays][inside].mean())
            layer = model.get_layer("dist")
            weights, bias = layer.get_weights()
            layer.set_weights([weights, np.full_like(bias, ray)])
        share = float(np.clip(prob[prob >= 0].mean(), 0.01, 0.99))
        layer = model.get_layer("prob")
        weights, bias = layer.get_weights()
        layer.set_weights([weights, np.full_like(bias, np.log(share / (1.0 - share)))])
        self._fresh_heads = False

    def _training_batch(
        self, data: SparseDataset, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Targets of fresh augmented crops, drawn again while no grid point is annotated:
        the probability loss averages over annotated grid points, and a batch without any (a
        tiny annotation, every crop landing between grid points) gives NaN."""
        for _draw in range(20):
            x, prob, dist = self.targets(
                data.sample_batch(rng, self.config.batch_size, self._patch_size())
            )
            if (prob >= 0).any():
                return x, prob, dist
        raise BadInputError(
            "The annotation is too small to train StarDist on: paint whole cells and some "
            "background around them."
        )

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
        tf = import_tf()
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

    def find_thresholds(self, data: SparseDataset) -> StarDistThresholds:
        """``prob_thresh``/``nms_thresh`` with the best F1 on the annotated pixels
        (:func:`~napari_cellsparse.training.stardist_tuning.search_thresholds`)."""
        return search_thresholds(
            data, self.probabilities, self.instances, self.config.grid, self.thresholds
        )

    def predict_scaled(self, image: np.ndarray) -> np.ndarray:
        """Instance labels (int32, 0 = background) with the tuned thresholds."""
        model = self._require_model()
        image = self._check_image(image)
        tf = import_tf()
        with tf.device(self._tf_device):
            labels, _ = model.predict_instances(
                image,
                axes="YXC",
                normalizer=None,
                prob_thresh=self.thresholds.prob_thresh,
                nms_thresh=self.thresholds.nms_thresh,
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
        save_weights(self._require_model().keras_model, folder)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """A network of this config holding ``weights`` (a bioimage.io package's); WeightsError
        if they belong to a differently shaped network."""
        model = self._new_model()
        try:
            model.keras_model.set_weights(weights)
        except ValueError as err:
            raise WeightsError(
                f"The weights do not fit this StarDist configuration ({err})."
            ) from err
        self.model = model
        self._fresh_heads = False

    def load(self, folder: Path) -> None:
        """Rebuild the network from the config and read its weights; WeightsError if unusable."""
        path = Path(folder) / WEIGHTS_FILE
        if not path.is_file():
            raise WeightsError(f"The model folder {folder} has no weights file {WEIGHTS_FILE}.")
        model = self._new_model()
        try:
            load_weights(model.keras_model, path)
        except Exception as err:
            raise WeightsError(
                f"{path} is damaged or belongs to a differently configured StarDist network "
                f"and cannot be loaded ({err})."
            ) from err
        self.model = model
        self._fresh_heads = False
