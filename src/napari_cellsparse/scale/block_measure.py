"""Measurements of a block-wise run, as sinks (:class:`.blockwise.BlockSink`).

:class:`BlockMeasurements` measures each block's own objects as the block finishes (a
per-object table from :func:`~napari_cellsparse.scale.measure.measure_objects`, with the raw
intensities, and / or their GeoJSON features), never the whole image. :class:`PairedMeasurements`
measures the finished mask against a partner mask (nuclei and whole cells: QuPath's
compartments), which pairs objects across block borders and so needs the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import BadInputError
from ..formats.image_sources import ImageSource, open_image
from .blockwise import LABEL_DTYPE, BlockObjects
from .measure import measure_objects

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BlockMeasurements", "PairedMeasurements"]


class BlockMeasurements:
    """A sink that keeps each block's measurement rows and / or GeoJSON features.

    ``table``: one row per object (``.table`` once the run is complete; an empty table with
    the columns when there were no objects). ``features``: the objects as GeoJSON features
    in image coordinates (``.features``), with their measurements when ``table`` is on.
    ``pixel_size`` (µm per pixel) defaults to the image's.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        table: bool = True,
        features: bool = False,
        pixel_size: float | None = None,
        channel_names: Sequence[str] | None = None,
    ) -> None:
        self.source = source
        self.measure, self.trace = table, features
        self.pixel_size = pixel_size if pixel_size is not None else source.pixel_size
        self.channel_names = channel_names
        self._tables: list[pd.DataFrame] = []
        self.table: pd.DataFrame | None = None
        self.features: list[dict[str, Any]] = []

    def add(self, objects: BlockObjects) -> None:
        """Measure and / or trace one block's own objects."""
        block_table = None
        if self.measure:
            block_table = self._measure(
                objects.labels,
                objects.pixels,
                offset=(objects.region.y0, objects.region.x0),
                ids=objects.ids.tolist(),
            )
            self._tables.append(block_table)
        if self.trace:
            self.features.extend(_block_features(objects, block_table))

    def finish(self, labels: Any) -> None:
        """Join the blocks' rows into :attr:`table`."""
        if not self.measure:
            return
        if self._tables:
            import pandas as pd

            self.table = pd.concat(self._tables, ignore_index=True)
        else:  # no objects: an empty table with the columns a table would have
            self.table = self._measure(
                np.zeros((2, 2), LABEL_DTYPE),
                np.zeros((2, 2, self.source.n_channels), self.source.dtype),
            )

    def _measure(self, labels: np.ndarray, pixels: np.ndarray, **options: Any) -> pd.DataFrame:
        return measure_objects(
            labels,
            pixels,
            pixel_size=self.pixel_size,
            channel_names=self.channel_names,
            image_name=self.source.name,
            **options,
        )


def _block_features(objects: BlockObjects, table: pd.DataFrame | None = None) -> list[dict]:
    """GeoJSON features of one block's own objects, in image coordinates, with their global
    ids and, given the block's ``table``, their measurements. The objects are numbered 1..K
    for the tracing, whatever their global ids."""
    from ..formats.geojson import labels_to_features

    written, ids, outer = objects.labels, objects.ids, objects.region
    local = np.zeros(written.shape, LABEL_DTYPE)
    present = written > 0
    local[present] = np.searchsorted(ids, written[present]) + 1
    measurements = None
    if table is not None:
        from ..formats.tables import table_measurements

        by_id = table_measurements(table)
        measurements = {k: by_id[int(g)] for k, g in enumerate(ids, start=1) if int(g) in by_id}
    found = labels_to_features(local, measurements=measurements, offset=(outer.x0, outer.y0))
    for feature in found:
        feature["properties"]["label_id"] = int(ids[feature["properties"]["label_id"] - 1])
    return found


class PairedMeasurements:
    """A sink measuring the finished mask with its partner mask: Nucleus / Cytoplasm / Cell.

    ``partner`` is the file of the other mask: the nuclei when the run makes whole cells
    (``made="cells"``), the cells when it makes nuclei (``made="nuclei"``); the table
    (``.table``) has one row per cell. Whole images in memory: int32 labels and the raw
    image of one field of view or slide.
    """

    def __init__(
        self,
        source: ImageSource,
        partner: str | Path,
        made: str,
        *,
        pixel_size: float | None = None,
        channel_names: Sequence[str] | None = None,
    ) -> None:
        if made not in ("cells", "nuclei"):
            raise BadInputError(f"A paired run makes 'cells' or 'nuclei', not {made!r}.")
        self.source, self.partner, self.made = source, Path(partner), made
        self.pixel_size = pixel_size if pixel_size is not None else source.pixel_size
        self.channel_names = channel_names
        self.table: pd.DataFrame | None = None

    def add(self, objects: BlockObjects) -> None:
        """Nothing per block: pairing needs both whole masks."""

    def finish(self, labels: Any) -> None:
        """Measure the complete ``labels`` with the partner mask into :attr:`table`."""
        made = np.asarray(labels[:])
        with open_image(self.partner) as partner:
            other = partner.read_all()[..., 0]
        cells, nuclei = (made, other) if self.made == "cells" else (other, made)
        if cells.shape != nuclei.shape:
            raise BadInputError(
                f"The nucleus and whole-cell masks of {self.source.name} differ in shape "
                f"({nuclei.shape} and {cells.shape})."
            )
        self.table = measure_objects(
            cells,
            self.source.read_all(),
            nuclei=nuclei,
            pixel_size=self.pixel_size,
            channel_names=self.channel_names,
            image_name=self.source.name,
        )
