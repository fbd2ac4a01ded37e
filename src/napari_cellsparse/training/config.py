"""The frozen configuration of every training backend, its tuned thresholds and object scale.

A configuration holds what a person chooses (steps, crop and batch size, learning rate, seed,
augmentation, the backend's network shape); it is made once, checked against the bounds of
:mod:`napari_cellsparse.core.limits`, and never changed (``dataclasses.replace`` gives a new
one). What training *finds* is kept apart: the post-processing thresholds that ``tune()``
picks (:class:`Thresholds`, saved as ``thresholds.json`` beside ``config.json``) and the
object scale measured on the annotation (:class:`ObjectScale`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..core.errors import BadInputError
from ..core.limits import check_settings

__all__ = [
    "CellposeConfig",
    "CellposeThresholds",
    "ObjectScale",
    "StarDistConfig",
    "StarDistThresholds",
    "Thresholds",
    "TrainingConfig",
    "UNetConfig",
    "UNetThresholds",
]

_F = TypeVar("_F", bound="_Frozen")


def _coerce(default: Any, value: Any) -> Any:
    """``value`` (already checked) in the type of the field's ``default``: JSON and typed
    settings give lists and floats where the field holds a tuple or an int."""
    if value is None:
        return value
    if isinstance(default, tuple):
        return tuple(int(v) for v in value)
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _plain(value: Any) -> Any:
    """JSON's form of a field: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class _Frozen:
    """Named fields with defaults, made from settings by name, written as plain JSON."""

    kind: ClassVar[str] = "training"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names of the fields, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls: type[_F], **settings: Any) -> _F:
        """Defaults overridden by ``settings``; BadInputError naming an unknown setting or
        one outside its bounds (:data:`~napari_cellsparse.core.limits.SETTING_BOUNDS`)."""
        known = cls.names()
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise BadInputError(
                f"Unknown setting(s) for {cls.kind}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}."
            )
        check_settings(settings)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(**{k: _coerce(defaults[k], v) for k, v in settings.items()})

    @classmethod
    def from_stored(cls: type[_F], stored: Mapping[str, Any]) -> _F:
        """The fields found in ``stored`` (a model's JSON files, which hold other keys too)."""
        return cls.from_settings(**{k: v for k, v in stored.items() if k in cls.names()})

    def as_dict(self) -> dict[str, Any]:
        """Every field by name, as plain JSON values."""
        return {name: _plain(getattr(self, name)) for name in self.names()}


@dataclass(frozen=True)
class TrainingConfig(_Frozen):
    """What every backend is trained with."""

    target_diameter: float = 24.0  # px: the cells are rescaled to this width for training
    patch_size: int = 128
    batch_size: int = 8
    learning_rate: float = 1e-3
    steps: int = 600
    seed: int = 0
    # Objects wider than this many times the widest annotated cell are left out of
    # predictions (background grown into one object, merged clumps); 0 keeps them all.
    max_size_factor: float = 2.0
    # Objects narrower than this many times the narrowest annotated cell are left out of
    # predictions (slivers at the image's edge, fragments); 0 keeps them all. User story on
    # the 37 unused training images, Cellpose, 3 seeds: F1 0.861 / 0.859 / 0.855 with every
    # object, 0.870 / 0.869 / 0.862 at 0.8 (0.863 / 0.862 / 0.857 at 0.5); of the objects
    # under 1.0, 7-12 matched a cell and 46-58 did not, most at the edge. StarDist and the
    # U-Net predict none that small (benchmarks/README.md).
    min_size_factor: float = 0.8
    # Objects that stand out of their surroundings by fewer standard deviations of them than
    # this (or a quarter of the annotated cells' median, when lower) are left out of
    # predictions (:mod:`napari_cellsparse.training.contrast`); 0 keeps them all.
    min_snr: float = 2.0
    # Self-training (:mod:`napari_cellsparse.training.self_training`): after the steps, the
    # model's confident cells in unannotated pixels join the training data and it trains
    # this share of the steps more; 0 (the default) turns it off. Measured on the user story
    # (Cellpose, 0.5, 3 seeds): F1 0.841 against 0.849 for the same steps without it, in 1.5x
    # the time (benchmarks/README.md), so it is off unless asked for.
    self_training: float = 0.0
    # Touching-cell augmentation (:mod:`napari_cellsparse.models.touching`): this share of
    # the crops centred on an annotated cell get a copy of another annotated cell pasted
    # against it; 0 turns it off. User story, the 37 unused training images, 3 seeds, F1 /
    # PQ means without and with 0.5: U-Net 0.865 / 0.713 -> 0.877 / 0.729 (cells lost in a
    # merged object 458 -> 354), StarDist 0.826 / 0.595 -> 0.844 / 0.614, Cellpose 0.875 /
    # 0.720 -> 0.882 / 0.731 (fluo/test and histology: benchmarks/README.md).
    touching_cells: float = 0.5


@dataclass(frozen=True)
class UNetConfig(TrainingConfig):
    """The 3-class U-Net: its size, target border and Dice weight.

    450 steps (was 1000): the user story (30 cells, 3 seeds) gave F1 0.720 / 0.713 / 0.740 in
    58 s against 0.734 / 0.694 / 0.767 in 142 s (``benchmarks/results/i25_sparse_unet_user.json``
    and its earlier version in git): the one-cycle rate anneals as well in fewer steps. 400
    (with the neck split): on the 37 training images the user story does not use, F1 0.855 /
    0.861 / 0.864 in 52-54 s against 0.867 / 0.869 / 0.863 in 60-64 s at 450.
    Its rate ends near zero, so averaging the last quarter's weights (``average_tail``, off)
    changed nothing: 0.758 / 0.740 / 0.785 against 0.754 / 0.739 / 0.791
    (``i25_unet_weight_average.json``).
    """

    kind: ClassVar[str] = "unet"
    steps: int = 400  # about a minute of training on a 2-core laptop CPU
    learning_rate: float = 2e-3
    base_filters: int = 16
    depth: int = 3
    grid: int = 2
    border_width: int = 2
    dice_weight: float = 1.0
    one_cycle: bool = True  # the rate: warm-up then cosine annealing (else constant)
    average_tail: float = 0.0  # the share of the last steps whose weights are averaged
    # Off for the U-Net: on `fluo/test` its user story read the same with touching cells
    # pasted (0.866 both), and the histology user story lost 0.04 F1 (0.629 -> 0.589; one
    # seed's network 0.659 -> 0.586 at its best thresholds), histology's best backend.
    touching_cells: float = 0.0


@dataclass(frozen=True)
class CellposeConfig(TrainingConfig):
    """Cellpose's CPnet: channel widths, optimiser, flow dynamics, tiling, cell erasing.

    Cells at 17 px (upstream's nuclei models; its cytoplasm models use 30), 64 px crops 8 a
    batch and 512 px prediction tiles: the user story (30 cells, 3 seeds) went from F1 0.816
    in 200 s of training and 13.9 s per megapixel of prediction to 0.844 in 51 s and
    2.6 s/MPx (``benchmarks/results/i25_sparse_cellpose_user.json``; 16 a batch gave 0.833 in
    101 s). Whole cells with a cytoplasm were not measured; ``target_diameter=30`` is
    upstream's choice for them. The weights are the mean over the last half of the steps
    (``average_tail``): user story 0.889 / 0.888 / 0.849 and full annotation 0.903 / 0.891 /
    0.910, where the last step's weights gave 0.877 / 0.867 / 0.757 and 0.909 / 0.897 / 0.864
    and the last quarter's mean 0.883 / 0.874 / 0.855 and 0.900 / 0.900 / 0.892
    (``i25_cellpose_weight_average_half.json``, ``i25_channels_last_cellpose.json``,
    ``i25_cellpose_weight_average.json``).
    """

    kind: ClassVar[str] = "cellpose"
    steps: int = 200  # under a minute of training on a 2-core laptop CPU
    target_diameter: float = 17.0
    patch_size: int = 64
    batch_size: int = 8
    learning_rate: float = 2e-3
    nbase: tuple[int, ...] = (16, 32, 64, 128)
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    niter: int = 200
    min_size: int = 15
    tile_size: int = 512  # prediction tiles: one for an image of up to 512 px at this scale
    erase_cells: float = 0.5  # augmentation: the share of crops whose cells are painted over
    edge_pad: float = 0.5  # prediction: cell diameters of the image's edge repeated outward
    average_tail: float = 0.5  # the share of the last steps whose weights are averaged


@dataclass(frozen=True)
class StarDistConfig(TrainingConfig):
    """Upstream StarDist's network shape, and the pretrained model to start from (if any).

    Upstream's network size: a 16-filter variant was 2.8x faster per step on a 2-core CPU but
    clearly worse for the same training time (real nuclei, sparse annotation: F1 0.76 after
    600 steps vs 0.84 after 300 of these). Upstream's rate (3e-4) is made for 40,000 steps;
    1e-3 learns much faster in the few hundred steps a CPU can afford. Small crops (64 px,
    16 a batch: half the pixels of 8 x 128 px, more of them annotated), the distance loss
    weighted as much as the probability loss (its error, 4-6 px, was what kept objects apart
    badly) and a one-cycle rate made the user story (30 cells, 3 seeds) go from F1
    0.25-0.78 in 130 s to 0.81-0.83 in 65 s (``benchmarks/results/i25_sparse_stardist_user.json``).
    A constant rate whose last half's weights are averaged (``average_tail``) then gave
    0.830 / 0.832 / 0.854 and full annotation 0.870 / 0.877 / 0.886, where the one cycle gave
    0.792 / 0.847 / 0.814 and 0.870 / 0.882 / 0.864; averaging the one cycle's annealed tail
    changed nothing (0.785 / 0.849 / 0.822) (``i25_stardist_constant_average*.json``,
    ``i25_stardist_channels_last_zoom.json``, ``i25_stardist_one_cycle_average.json``).
    24 filters in the U-Net's first level instead of upstream's 32: a step is a quarter
    shorter (0.17 against 0.23 s), so the default training ends within a minute (48-52 s
    against 62-66 s the same day); the user story on the 37 training images it does not use
    read the same (F1 0.846 against 0.844, 3 seeds), on ``fluo/test`` 0.850 against 0.862
    (full annotation 0.861 against 0.871; ``i25_stardist_filters24.json``).
    """

    kind: ClassVar[str] = "stardist"
    steps: int = 256  # about a minute of training on a 2-core laptop CPU
    patch_size: int = 64
    batch_size: int = 16
    learning_rate: float = 1e-3
    n_rays: int = 32
    grid: tuple[int, ...] = (2, 2)
    unet_n_depth: int = 3
    unet_n_filter_base: int = 24
    net_conv_after_unet: int = 128
    pretrained: str | None = None
    dist_loss_weight: float = 1.0  # of the ray-distance loss against the probability loss
    one_cycle: bool = False  # the rate: warm-up then cosine annealing (else constant)
    average_tail: float = 0.5  # the share of the last steps whose weights are averaged


@dataclass(frozen=True)
class Thresholds(_Frozen):
    """Post-processing thresholds found by ``tune()``, and the annotated F1 they scored
    (None: not tuned yet)."""

    tuned_annotated_f1: float | None = None


@dataclass(frozen=True)
class UNetThresholds(Thresholds):
    """Centre seeds and the cell region of the U-Net's class probabilities.

    The tuning picks the region's level from how well objects fit the annotated cells; the
    centre level a few annotated cells cannot tell apart stays at its strict default (see
    :meth:`~napari_cellsparse.training.unet.UNetNetwork.find_thresholds`).
    """

    kind: ClassVar[str] = "unet"
    centre_threshold: float = 0.8
    foreground_threshold: float = 0.5
    split_necks: bool = True  # split centre regions where they narrow between touching cells


@dataclass(frozen=True)
class CellposeThresholds(Thresholds):
    """Upstream Cellpose's cell probability and flow-consistency thresholds."""

    kind: ClassVar[str] = "cellpose"
    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    split_necks: bool = True  # split objects where they narrow between touching cells


@dataclass(frozen=True)
class StarDistThresholds(Thresholds):
    """Upstream StarDist's object probability and NMS overlap thresholds."""

    kind: ClassVar[str] = "stardist"
    prob_thresh: float = 0.5
    nms_thresh: float = 0.4


@dataclass(frozen=True)
class ObjectScale:
    """The object scale measured on the annotation: the cells' median diameter (px), their
    polarity (1: brighter than the background), how the automatic estimate relates to it, and
    the widest and narrowest cells at the training scale (px), and how far the annotated cells
    stand out of their surroundings."""

    train_diameter: float
    polarity: float = 1.0
    diameter_calibration: float = 1.0
    widest_cell: float = 0.0
    narrowest_cell: float = 0.0  # at the training scale (0: unknown, nothing is dropped)
    cell_snr: float = 0.0  # the annotated cells' median signal-to-noise ratio (0: unknown)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> ObjectScale:
        """The scale kept in a model's ``config.json`` (KeyError/ValueError when damaged)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: float(stored[k]) for k in names if k in stored})

    def as_dict(self) -> dict[str, float]:
        """Every field by name."""
        return dataclasses.asdict(self)
