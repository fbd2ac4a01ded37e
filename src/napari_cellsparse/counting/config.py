"""A counter's configuration: its network, training and reading settings, in one frozen object.

Saved as the model's ``config.json`` (with the number of channels) and read back by
:func:`~napari_cellsparse.counting.counter.load_counter`; training fills in what it measures
(``count_scale``, ``polarity``, the diameters).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.errors import BadInputError

__all__ = ["CounterConfig"]


@dataclass(frozen=True)
class CounterConfig:
    """Everything needed to rebuild a counter's network and read its output (JSON round-trip)."""

    encoder: str = "resnet18"
    encoder_depth: int = 4
    decoder_width: int = 8
    patch_size: int = 96
    batch_size: int = 8
    learning_rate: float = 3e-3
    mse_weight: float = 1.0
    steps: int = 650  # under 3 minutes on a 2-core laptop CPU
    # Touching-cell augmentation (:mod:`napari_cellsparse.counting.point_cells`): this share
    # of the crops centred on a given point whose cell's outline the foreground shows gets
    # another such cell pasted against it. Off: at 0.5 the counting user story's centres F1
    # rose on 34 unused fluorescence images (0.881 -> 0.887, 3 seeds) but fell on `fluo/test`
    # (0.912 -> 0.907) and on histology (0.670 -> 0.647; benchmarks/README.md).
    touching_cells: float = 0.0
    # The rate: warm-up then cosine annealing (else constant), and the share of the last steps
    # whose weights are averaged. A constant rate with the last half averaged, which helped
    # StarDist, counted worse (user story seed 0: F1 0.830 against 0.883, count +8.0 % against
    # -0.5 %; benchmarks/results/i25_counting_constant_average_seed0.json).
    one_cycle: bool = True
    average_tail: float = 0.0
    seed: int = 0
    diameter: float = 0.0  # the training images' cell diameter in pixels; 0 = estimate
    target_diameter: float = 16.0  # cell diameter at the canonical scale
    sigma: float = 0.0  # of the Gaussians at the canonical scale; 0 = a third of the radius
    neighbourhood: float = 1.5  # trusted disc around a point, in cell radii
    probable_background: float = 0.5  # loss weight of the image's dark space (0 = off)
    density_cut: float = 0.05
    count_scale: float = 1.0  # set at training: centres / density mass on the training images
    peak_threshold: float = 0.3
    test_time_augmentation: bool = True  # heat map = mean over the 8 flips/turns
    foreground_gate: bool = True  # peaks and density count only near the image's foreground
    snap_to_foreground: bool = True  # centres move to the centroid of their cell's pixels
    fill_foreground: bool = True  # a cell-sized piece of foreground with no centre gets one
    peak_prominence: float = 0.25  # a peak must dip this fraction on the way to a higher one
    small_cells: bool = True  # images read at half scale or less are read again at twice it
    centre_count: bool = True  # count = centres + density far from them (False: density sum)
    min_distance: float = 0.0  # between centres at the canonical scale; 0 = a cell radius
    polarity: float = 1.0  # set at training: +1 bright cells, -1 dark cells
    diameter_calibration: float = 1.0  # set at training: given diameter / estimated
    train_diameter: float = 0.0  # set at training: median diameter of the training images
    diameter_range: tuple[float, float] = (0.0, 0.0)  # set at training: of the training images

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CounterConfig:
        """A config from JSON, ignoring keys it does not know (clear error for bad values)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "diameter_range" in values:
            values["diameter_range"] = tuple(float(v) for v in values["diameter_range"])
        try:
            return cls(**values)
        except TypeError as err:
            raise BadInputError(f"Bad counter settings ({err}).") from err

    def with_settings(self, **settings: Any) -> CounterConfig:
        """A copy with ``settings`` applied; unknown names are a clear error."""
        unknown = set(settings) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise BadInputError(
                f"Unknown counter setting(s): {', '.join(sorted(unknown))}; known: {known}."
            )
        return dataclasses.replace(self, **settings)

    @property
    def radius(self) -> float:
        """Cell radius at the canonical scale."""
        return self.target_diameter / 2.0

    @property
    def separation(self) -> float:
        """Least distance between two centres at the canonical scale (default: a radius)."""
        return self.min_distance or max(2.0, self.radius)
