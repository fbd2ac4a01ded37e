"""Touching-cell augmentation: a pasted cell lands against the crop's centre cell, changes only
the pixels it covers (into itself), and never turns an unannotated pixel into background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cellsparse.core.sparse_labels import IGNORE
from napari_cellsparse.models.touching import CellBank, paste_touching
from napari_cellsparse.training.sampling import SparseDataset


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _annotated_image() -> tuple[np.ndarray, np.ndarray]:
    """Two lone annotated cells (ids 2 and 3) in a band of background; the rest unannotated;
    and one cell cut by the image's edge (id 4)."""
    shape = (96, 96)
    labels = np.full(shape, IGNORE, np.int32)
    image = np.zeros((*shape, 1), np.float32)
    for cell, centre in ((2, (30, 30)), (3, (66, 62)), (4, (0, 80))):
        disc = _disc(shape, centre, 8)
        labels[ndi.binary_dilation(disc, iterations=6) & (labels == IGNORE)] = 0
        labels[disc] = cell
        image[disc] = 0.4 + 0.2 * cell
    return image, labels


def test_the_bank_holds_the_annotated_cells_not_cut_by_the_edge() -> None:
    image, labels = _annotated_image()
    bank = CellBank.of([image], [labels])
    assert len(bank) == 2
    assert sorted(int(m.sum()) for m in bank.masks) == [int(_disc((96, 96), (30, 30), 8).sum())] * 2


def test_a_pasted_cell_touches_the_centre_cell_and_changes_only_the_pixels_it_covers() -> None:
    image, labels = _annotated_image()
    bank = CellBank.of([image], [labels])
    pasted = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        img, lab = image[6:54, 6:54].copy(), labels[6:54, 6:54].copy()  # centred on cell 2
        before_img, before_lab = img.copy(), lab.copy()
        if not paste_touching(rng, img, lab, bank):
            continue
        pasted += 1
        new = lab == int(lab.max())
        assert int(lab.max()) == int(before_lab.max()) + 1
        changed = (lab != before_lab) | np.any(img != before_img, axis=-1)
        assert not (changed & ~new).any()  # nothing changes outside the pasted cell
        assert not ((lab == 0) & (before_lab != 0)).any()  # no pixel becomes background
        assert (before_lab[new] != 3).all()  # no other annotated cell is covered
        touching = ndi.binary_dilation(new, iterations=2) & (lab == 2)
        assert touching.any(), "the pasted cell lies against the centre cell"
        assert (lab == 2).sum() > 0.6 * (before_lab == 2).sum()
    assert pasted >= 10


def test_a_dataset_with_touching_cells_pastes_in_crops_on_cells_only() -> None:
    image, labels = _annotated_image()
    rng = np.random.default_rng(0)
    plain = SparseDataset([image], [labels]).sample_batch(rng, 32, 48)
    rng = np.random.default_rng(0)
    dataset = SparseDataset([image], [labels], touching=1.0)
    batch = dataset.sample_batch(rng, 32, 48)
    cells_per_crop = [len(np.unique(lab[lab > 0])) for lab in batch.labels]
    assert max(cells_per_crop) >= 2
    assert max(len(np.unique(lab[lab > 0])) for lab in plain.labels) <= 2
    assert sum(c >= 2 for c in cells_per_crop) > sum(
        len(np.unique(lab[lab > 0])) >= 2 for lab in plain.labels
    )
