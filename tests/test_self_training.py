"""Self-training: confident cells of the model join the training data, never as background.

A tiny U-Net learns from 6 annotated cells of generated nuclei; its confident objects on the
unannotated rest of the image are then checked against the generated truth.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.core.sparse_labels import IGNORE, to_internal
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import train, train_iter
from napari_cellsparse.training.inputs import training_pairs
from napari_cellsparse.training.self_training import add_cells, confident_cells, pseudo_label

SETTINGS = {"base_filters": 8, "patch_size": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generated image, its truth and a sparse annotation of 6 cells with their band."""
    image, truth = make_nuclei((160, 160), n_objects=24, radius=(7.0, 9.0), seed=1)
    return image, truth, sparse_from_truth(image, truth, k=3, band=10)


@pytest.fixture(scope="module")
def model(nuclei, tmp_path_factory: pytest.TempPathFactory):
    image, _, annotation = nuclei
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(tmp_path_factory.mktemp("home")))
        return train("unet", image, annotation, name="clean", steps=120, **SETTINGS)


def test_added_cells_never_make_an_unannotated_pixel_background() -> None:
    rng = np.random.default_rng(0)
    internal = rng.choice([IGNORE, 0, 1, 2], size=(40, 40)).astype(np.int32)
    cells = rng.integers(0, 4, size=(40, 40)).astype(np.int32)  # objects over everything
    out = add_cells(internal, cells)
    was_ignored = internal == IGNORE
    assert not (out[was_ignored] == 0).any()  # never background
    np.testing.assert_array_equal(out[~was_ignored], internal[~was_ignored])
    assert (out[was_ignored & (cells > 0)] > internal.max()).all()  # new ids only
    np.testing.assert_array_equal(out[was_ignored & (cells == 0)], IGNORE)


def test_confident_cells_are_real_unannotated_nuclei(model, nuclei) -> None:
    image, truth, annotation = nuclei
    internal = to_internal(annotation)
    area = float(np.median(np.bincount(internal[internal > 0])[1:]))
    cells = confident_cells(model, image[..., None].astype(np.float32), internal, area)
    ids = [i for i in np.unique(cells) if i]
    assert len(ids) >= 5, len(ids)
    annotated = {int(t) for t in np.unique(truth[internal > 0])}
    for i in ids:
        obj = cells == i
        assert (internal[obj] != IGNORE).mean() <= 0.1
        best = np.bincount(truth[obj]).argmax()
        assert best > 0 and best not in annotated
        iou = (obj & (truth == best)).sum() / (obj | (truth == best)).sum()
        assert iou >= 0.5, (i, iou)


def test_pseudo_label_keeps_every_annotated_pixel(model, nuclei) -> None:
    image, _, annotation = nuclei
    pairs = training_pairs(image, annotation)
    grown, added = pseudo_label(model, pairs)
    (_, before), (_, after) = pairs[0], grown[0]
    known = before != IGNORE
    np.testing.assert_array_equal(after[known], before[known])
    assert not (after[~known] == 0).any()
    assert added == len(np.unique(after[after > before.max()])) > 0


def test_training_with_self_training_records_the_cells_it_added(nuclei, tmp_path, monkeypatch):
    image, _, annotation = nuclei
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    events = []
    work = train_iter(
        "unet", image, annotation, name="self", steps=40, self_training=0.5, **SETTINGS
    )
    trained = run_sync(work, events.append)
    more = [e for e in events if e.message.startswith("Self-training unet with")]
    assert [e.step for e in more] == list(range(41, 61)) and events[-1].total == 60
    assert any(e.message.startswith("Self-training: the model") for e in events)
    added = int(re.match(r"Self-training unet with (\d+) more cells", more[0].message)[1])
    session = trained.info["sessions"][-1]
    assert session["steps"] == 60 and session["annotated_cells"] == 6  # the person's cells
    assert session["self_training_cells"] == added > 0
    with pytest.raises(BadInputError, match="self_training"):
        train("unet", image, annotation, name="bad", steps=1, self_training=5.0, **SETTINGS)


def test_self_training_keeps_the_persons_scale(model, nuclei, monkeypatch) -> None:
    # The model predicts at the scale of the person's cells: the grown annotation is
    # rescaled by the same factor even when the added cells are much smaller.
    from napari_cellsparse.training import api

    image, _, annotation = nuclei
    pairs = training_pairs(image, annotation)
    person = api._Annotation(image, annotation, pairs, 16.0)
    before = [img.shape for img in person.dataset.images]
    _, small = make_nuclei(image.shape, n_objects=60, radius=(3.0, 4.0), seed=9)
    lab = pairs[0][1]
    tiny = (small > 0) & (lab == IGNORE)
    grown = np.where(tiny, lab.max() + 1 + small, lab).astype(lab.dtype)
    monkeypatch.setattr(api, "pseudo_label", lambda _model, p: ([(p[0][0], grown)], 9))
    assert person.self_train(model) == 9
    assert [img.shape for img in person.dataset.images] == before
