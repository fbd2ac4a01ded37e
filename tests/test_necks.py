"""Objects of touching cells split where they narrow: the U-Net's centre regions, and any
backend's objects (Cellpose's)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellsparse.models.necks import split_at_necks, split_objects
from napari_cellsparse.training.config import UNetConfig
from napari_cellsparse.training.unet import BORDER, CENTRE, UNetNetwork

SHAPE = (96, 128)


def _disc(centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _ellipse(centre: tuple[float, float], ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return ((yy - centre[0]) / ry) ** 2 + ((xx - centre[1]) / rx) ** 2 <= 1.0


def _probabilities(cells: np.ndarray) -> np.ndarray:
    """Class probabilities a U-Net would give: centre inside, border on a 2 px rim."""
    from scipy import ndimage as ndi

    prob = np.zeros((3, *SHAPE), np.float32)
    inner = ndi.binary_erosion(cells, iterations=2)
    prob[CENTRE][inner] = 0.95
    prob[BORDER][cells & ~inner] = 0.95
    prob[0] = 1.0 - prob[BORDER] - prob[CENTRE]
    return prob


@pytest.fixture
def network() -> UNetNetwork:
    return UNetNetwork(UNetConfig(), 1, "cpu")


def test_touching_cells_whose_centres_run_together_are_two_objects(network) -> None:
    pair = _disc((48, 50), 11) | _disc((48, 68), 11)  # overlapping: a waist between them
    prob = _probabilities(pair)
    merged = network.instances(prob, 0.8, 0.5, split_necks=False)
    split = network.instances(prob, 0.8, 0.5)
    assert len(np.unique(merged[pair])) == 1
    assert len(np.unique(split[pair])) == 2
    assert set(np.unique(split[~pair])) == {0}
    left, right = split[48, 45], split[48, 73]  # each disc's far side goes to its own cell
    assert left != right and left > 0 and right > 0


@pytest.mark.parametrize(
    "cell",
    [_ellipse((48, 64), 8, 30), _disc((48, 64), 14), _ellipse((48, 64), 12, 20)],
    ids=["elongated", "round", "oval"],
)
def test_a_cell_without_a_waist_stays_one_object(network, cell) -> None:
    labels = network.instances(_probabilities(cell), 0.8, 0.5)
    assert len(np.unique(labels[cell])) == 1 and labels[cell].all()


def test_regions_with_one_maximum_keep_their_seed_and_ids_stay_unique() -> None:
    core = np.zeros(SHAPE, np.int32)
    core[_disc((20, 20), 6)] = 3
    core[_disc((60, 40), 9) | _disc((60, 55), 9)] = 7
    seeds, landscape = split_at_necks(core, 24.0)
    np.testing.assert_array_equal(seeds[core == 3], 3)  # untouched
    pair = np.unique(seeds[core == 7])
    pair = pair[pair > 0]
    assert len(pair) == 2 and 3 not in pair and 7 not in pair
    assert landscape.shape == SHAPE and landscape[60, 40] > landscape[60, 47]


def test_objects_holding_two_cells_are_split_and_the_others_kept() -> None:
    """An object over a touching pair becomes two that tile it; a round object, an
    elongated one and a pair of touching objects that are already two stay as they are."""
    labels = np.zeros(SHAPE, np.int32)
    labels[_disc((30, 30), 11) | _disc((30, 48), 11)] = 5  # one object, two cells
    labels[_ellipse((75, 30), 6, 22)] = 2
    labels[_disc((70, 100), 10)] = 9
    labels[_disc((50, 100), 10) & ~_disc((70, 100), 10)] = 4  # touches object 9
    out = split_objects(labels, 24.0)
    np.testing.assert_array_equal(out > 0, labels > 0)  # outlines unchanged
    for kept in (2, 4, 9):
        np.testing.assert_array_equal(out == kept, labels == kept)
    pair = np.unique(out[labels == 5])
    assert len(pair) == 2 and 5 in pair and pair.max() > 9  # a new id for the second part
    assert out[30, 22] != out[30, 56]
    np.testing.assert_array_equal(split_objects(np.zeros(SHAPE, np.int32), 24.0), 0)
