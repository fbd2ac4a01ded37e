"""Touching cells for counters: the cells under given points are read from the image's
foreground only where a piece is one cell, and a paste trusts only the pixels it covers,
with a peak at the pasted cell's centre."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cellsparse.counting.patches import CountingData
from napari_cellsparse.counting.point_cells import CellCrops, point_cells


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


SHAPE = (128, 128)
LONE = [(30.0, 30.0), (30.0, 95.0), (95.0, 30.0)]  # one point each
CLUMP = [(95.0, 88.0), (95.0, 103.0), (109.0, 95.0)]  # three touching cells, two points


def _image() -> tuple[np.ndarray, np.ndarray]:
    """Bright discs of diameter 16 on a dark background, and the given points (y, x): one on
    each lone cell, two on a clump of three touching cells."""
    image = np.full((*SHAPE, 1), 0.05, np.float32)
    for centre in LONE + CLUMP:
        image[_disc(SHAPE, centre, 8)] = 0.8
    points = np.array([*LONE, CLUMP[0], CLUMP[1]])
    return image, points


def test_only_a_given_cell_alone_on_its_foreground_piece_gets_an_outline() -> None:
    image, points = _image()
    outlines, known = point_cells(image, points, 1.0, 16.0)
    for j, centre in enumerate(LONE):
        cell = outlines == j + 1
        disc = _disc(SHAPE, centre, 8)
        assert (cell & disc).sum() >= 0.9 * disc.sum() and (cell & ~disc).sum() <= 0.1 * disc.sum()
    # the clump holds two points: no outline, a disc in the known map for each point
    assert not np.isin(outlines, [4, 5]).any()
    for j in (3, 4):
        assert (known == j + 1).sum() > 0.8 * np.pi * 8**2
    assert (known[outlines > 0] == outlines[outlines > 0]).all()


def _data(touching: float) -> CountingData:
    image, points = _image()
    target = np.zeros(SHAPE, np.float32)
    weight = np.zeros(SHAPE, np.float32)
    for y, x in points:
        weight[_disc(SHAPE, (y, x), 12)] = 1.0
    cells = CellCrops([image], [point_cells(image, points, 1.0, 16.0)])
    return CountingData([image], [target], [weight], [points], cells, touching, 2.7)


def test_a_paste_trusts_only_the_pixels_it_covers_and_adds_one_peak_there() -> None:
    image, _ = _image()
    data = _data(1.0)
    cells = data.cells
    assert cells is not None and len(cells.bank) == 3
    pasted = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        img = image[:64, :64].copy()  # holds lone cell 1 at (30, 30)
        extra = np.stack(
            [data.targets[0][:64, :64], data.masks[0][:64, :64], cells.known[0][:64, :64]], -1
        ).astype(np.float32)
        before_img, before = img.copy(), extra.copy()
        if not cells.paste(rng, img, extra, (30, 30), 2.7):
            continue
        pasted += 1
        new = extra[..., 2] == before[..., 2].max() + 1
        changed = np.any(img != before_img, axis=-1) | (extra[..., 1] != before[..., 1])
        assert not (changed & ~new).any()  # only the pasted pixels change
        assert (extra[..., 1][new] == 1).all()  # and they are trusted
        assert (extra[..., 1] >= before[..., 1]).all()  # nothing becomes less trusted
        peak = extra[..., 0] - before[..., 0]
        assert peak.max() > 0.9 and peak.sum() < 2 * np.pi * 2.7**2 + 1  # one unit peak
        assert new[np.unravel_index(int(np.argmax(peak)), peak.shape)]  # on the pasted cell
        assert not np.isin(before[..., 2][new], [2, 3, 4, 5]).any()  # no other given cell
        touching = ndi.binary_dilation(new, iterations=2) & (before[..., 2] == 1)
        assert touching.any(), "the pasted cell lies against the given cell"
    assert pasted >= 10


def test_a_counter_dataset_pastes_only_when_asked() -> None:
    # the given points' own targets are left empty here: any peak is a pasted cell's
    unit_peak = 2 * np.pi * 2.7**2
    rng = np.random.default_rng(0)
    assert _data(0.0).sample(rng, 64, 48)[1].sum() == 0
    rng = np.random.default_rng(0)
    _, targets, weights = _data(1.0).sample(rng, 64, 48)
    assert targets.sum() > 5 * unit_peak  # half the crops are on points, 3 of 5 outlined
    for target, weight in zip(targets[:, 0], weights[:, 0], strict=True):
        assert (weight[target > 0.5] == 1).all()  # each peak lies on trusted pixels


def test_a_counter_annotation_makes_cell_crops_only_when_touching_cells_is_on() -> None:
    from napari_cellsparse.counting.config import CounterConfig
    from napari_cellsparse.counting.training_data import CounterAnnotation

    image, points = _image()
    for share, expected in ((0.0, False), (0.5, True)):
        config = CounterConfig(touching_cells=share)
        annotation = CounterAnnotation([image], [image], [points], [None], [None], config)
        assert (annotation.data.cells is not None) is expected
        assert annotation.data.touching == share
    assert len(annotation.data.cells.bank) == 3  # the three lone cells
