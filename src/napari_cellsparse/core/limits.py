"""The bounds of every number the engine accepts from a user, and the one check of them.

Training settings, prediction settings and GeoJSON coordinates come from people (widgets,
``--set key=value``, HTTP bodies, files). A value outside these bounds is refused up front
with a :class:`~napari_cellsparse.core.errors.BadInputError` that names the setting and the
allowed range, before any data is prepared or any backend (PyTorch, TensorFlow) imported:
never a crash deep inside scipy or torch, never a silent misuse (``batch_size=0``).
The bounds are wide enough for any real use on a laptop or a workstation; the server's
request bodies use the same constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any

from .errors import BadInputError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_COORDINATE",
    "MAX_DIAMETER",
    "MAX_LABEL_PIXELS",
    "MAX_MIN_AREA",
    "MAX_PATCH_SIZE",
    "MAX_SEED",
    "MAX_SIZE_FACTOR",
    "MAX_STEPS",
    "MAX_TARGET_DIAMETER",
    "MIN_PATCH_SIZE",
    "SETTING_BOUNDS",
    "Bound",
    "check_setting",
    "check_settings",
    "check_training",
]

MIN_PATCH_SIZE = 16  # px; smaller crops vanish in the networks' down-sampling
MAX_PATCH_SIZE = 2048  # px; a batch of 2048 px crops already fills a laptop's memory
MAX_BATCH_SIZE = 256
MAX_STEPS = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds
MAX_TARGET_DIAMETER = 1000.0  # px at the training scale
MAX_SIZE_FACTOR = 100.0  # an object 100x wider than any annotated cell is no cell
MAX_SNR = 1000.0  # no cell stands out of its surroundings by 1000 standard deviations
MAX_DIAMETER = 10_000.0  # px: a cell diameter in an image (prediction, counting)
MAX_MIN_AREA = 100_000_000  # px: an object larger than this is larger than any image read
MAX_COORDINATE = 1_000_000.0  # px: GeoJSON coordinates (whole slides are ~200,000 px wide)
MAX_LABEL_PIXELS = 200_000_000  # a label image made from GeoJSON (800 MB as int32)


@dataclass(frozen=True)
class Bound:
    """An allowed range ``low..high``: ``integer`` values only, ``low`` itself excluded
    when ``above`` (e.g. a learning rate above 0); ``high`` may be infinite (any finite
    number above ``low``). NaN and infinities are never allowed."""

    low: float
    high: float
    integer: bool = False
    above: bool = False

    def describe(self) -> str:
        """The range in words, e.g. ``an integer from 16 to 2048``."""
        kind = "an integer" if self.integer else "a number"
        low, high = _text(self.low), _text(self.high)
        if math.isinf(self.high):
            return f"a finite {kind.split()[-1]} {'above' if self.above else 'from'} {low}"
        if self.above:
            return f"{kind} above {low} and at most {high}"
        return f"{kind} from {low} to {high}"

    def allows(self, value: Any) -> bool:
        """Whether ``value`` (a number; not a bool, a string or NaN) lies in the range."""
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
        if self.integer and not (isinstance(value, Integral) or number.is_integer()):
            return False
        low_ok = number > self.low if self.above else number >= self.low
        return low_ok and number <= self.high


@dataclass(frozen=True)
class Flag(Bound):
    """A yes/no setting: ``true`` or ``false`` only (not 0 or 1, not a string)."""

    low: float = 0.0
    high: float = 1.0

    def describe(self) -> str:
        return "true or false"

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)


def _text(number: float) -> str:
    """Whole numbers in full (``1000000``), others as ``%g``."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _int(low: float, high: float) -> Bound:
    return Bound(low, high, integer=True)


PROBABILITY = Bound(0.0, 1.0)
FLAG = Flag()
WEIGHT = Bound(0.0, 1000.0)

# Every numeric setting of the trainable models (sparse training backends and the counter)
# and of prediction. Lists (StarDist's ``grid``, Cellpose's ``nbase``) are checked per item.
SETTING_BOUNDS: Mapping[str, Bound] = MappingProxyType(
    {
        # shared by every trainer
        "patch_size": _int(MIN_PATCH_SIZE, MAX_PATCH_SIZE),
        "batch_size": _int(1, MAX_BATCH_SIZE),
        # A huge learning rate costs nothing: the training diverges and nothing is saved
        # (TrainingDivergedError), so only NaN, infinity and 0 or less are refused.
        "learning_rate": Bound(0.0, math.inf, above=True),
        "steps": _int(0, MAX_STEPS),
        "seed": _int(0, MAX_SEED),
        "target_diameter": Bound(0.0, MAX_TARGET_DIAMETER, above=True),
        # times the widest annotated cell (0: keep every predicted object)
        "max_size_factor": Bound(0.0, MAX_SIZE_FACTOR),
        # times the narrowest annotated cell (0: keep every predicted object)
        "min_size_factor": Bound(0.0, 1.0),
        # standard deviations of an object's surroundings (0: keep every predicted object)
        "min_snr": Bound(0.0, MAX_SNR),
        # self-training's extra steps, as a share of the steps (0: off)
        "self_training": Bound(0.0, 4.0),
        "touching_cells": PROBABILITY,  # share of the cell-centred crops (0: off)
        "average_tail": PROBABILITY,  # share of the steps (0: the last step's weights)
        # prediction
        "diameter": Bound(0.0, MAX_DIAMETER),  # 0: estimate it (the counter's setting)
        "min_area": Bound(0.0, MAX_MIN_AREA),
        # U-Net
        "base_filters": _int(1, 256),
        "depth": _int(1, 6),
        "grid": _int(1, 8),
        "border_width": _int(0, 64),
        "dice_weight": WEIGHT,
        "centre_threshold": PROBABILITY,
        "foreground_threshold": PROBABILITY,
        "split_necks": FLAG,
        # StarDist
        "n_rays": _int(3, 256),
        "unet_n_depth": _int(1, 6),
        "unet_n_filter_base": _int(1, 256),
        "net_conv_after_unet": _int(0, 1024),
        "prob_thresh": PROBABILITY,
        "nms_thresh": PROBABILITY,
        "dist_loss_weight": WEIGHT,
        "one_cycle": FLAG,
        # Cellpose
        "nbase": _int(1, 1024),
        "weight_decay": Bound(0.0, 1.0),
        "warmup_steps": _int(0, MAX_STEPS),
        "cellprob_threshold": Bound(-20.0, 20.0),
        "flow_threshold": Bound(0.0, 10.0),
        "niter": _int(1, 10_000),
        "min_size": _int(0, MAX_MIN_AREA),
        "tile_size": _int(MIN_PATCH_SIZE, MAX_PATCH_SIZE),
        "erase_cells": PROBABILITY,
        "edge_pad": Bound(0.0, 4.0),  # cell diameters (0: no padding)
        # the counter
        "encoder_depth": _int(1, 5),
        "decoder_width": _int(1, 256),
        "mse_weight": WEIGHT,
        "sigma": Bound(0.0, MAX_TARGET_DIAMETER),
        "neighbourhood": Bound(0.0, 100.0, above=True),
        "probable_background": WEIGHT,
        "density_cut": PROBABILITY,
        "peak_threshold": PROBABILITY,
        "min_distance": Bound(0.0, MAX_TARGET_DIAMETER),
    }
)


def check_setting(name: str, value: Any, bound: Bound | None = None) -> None:
    """Refuse ``value`` for the setting ``name`` when it is outside ``bound`` (default: its
    entry in :data:`SETTING_BOUNDS`; names without one are not checked here)."""
    bound = bound or SETTING_BOUNDS.get(name)
    if bound is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(bound.allows(v) for v in values):
        each = "each item of " if isinstance(value, (list, tuple)) else ""
        raise BadInputError(f"{each}{name} must be {bound.describe()}; got {value!r}.")


def check_settings(settings: Mapping[str, Any]) -> None:
    """:func:`check_setting` for every entry of ``settings`` (training or prediction)."""
    for name, value in settings.items():
        check_setting(name, value)


# What a training is told apart from its settings (the step count, model name, device...):
# such a name among the settings would collide with the call's own argument.
OWN_ARGUMENTS = (
    *("steps", "name", "reset", "device", "cancel", "progress", "config"),
    *("preview", "preview_every", "updates", "update_every", "background", "regions"),
)


def check_training(steps: Any, settings: Mapping[str, Any]) -> None:
    """A training's step count (None: the default) and settings, checked before any work."""
    own = [name for name in OWN_ARGUMENTS if name in settings]
    if own:
        raise BadInputError(
            f"{', '.join(own)} cannot be among the other settings: the steps, model name, "
            "device and the like have their own boxes (--steps, --name, --device, ...)."
        )
    if steps is not None:
        check_setting("steps", steps)
    check_settings(settings)
