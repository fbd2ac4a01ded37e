"""Where to annotate next: the test-time-augmentation disagreement map and its ranked places.

A tiny U-Net learns from 6 annotated cells of clean generated nuclei; its map is then asked
about an image whose left half holds well-separated bright nuclei like those it learned and
whose right half holds dim, touching, odd-shaped cells.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from _generated import HALF, clean_and_ambiguous
from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import train
from napari_cellsparse.training.uncertainty import (
    N_VIEWS,
    THRESHOLD,
    _unview,
    _view,
    disagreement,
    rank_places,
    uncertainty_iter,
    where_to_annotate,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny U-Net trained for 120 steps on 6 annotated clean nuclei (its own store)."""
    image, truth = make_nuclei((160, 160), n_objects=24, radius=(7.0, 9.0), seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(tmp_path_factory.mktemp("home")))
        return train(
            "unet",
            image,
            sparse_from_truth(image, truth, k=3, band=10),
            name="clean",
            steps=120,
            base_filters=8,
            patch_size=64,
            batch_size=4,
        )


def test_views_are_the_eight_symmetries_and_undo_exactly() -> None:
    a = np.arange(12 * 7 * 2).reshape(12, 7, 2)
    seen = {_view(a, k).tobytes() + bytes(_view(a, k).shape) for k in range(N_VIEWS)}
    assert len(seen) == N_VIEWS
    for k in range(N_VIEWS):
        np.testing.assert_array_equal(_unview(_view(a, k), k), a)


def test_disagreement_is_zero_when_all_agree_and_high_on_a_split_cell() -> None:
    cells = np.zeros((20, 40), np.int32)
    cells[5:15, 2:12] = 1
    cells[5:15, 20:36] = 2
    assert not disagreement([cells] * 8).any()
    split = cells.copy()
    split[5:15, 28:36] = 3  # half of the views cut cell 2 in two
    doubt = disagreement([cells] * 4 + [split] * 4)
    assert doubt.dtype == np.float32 and doubt.min() >= 0.0 and doubt.max() <= 1.0
    assert not doubt[cells == 1].any() and not doubt[cells == 0].any()
    assert doubt[cells == 2].min() > 0.2
    with pytest.raises(BadInputError):
        disagreement([cells])


def test_places_are_ranked_by_object_not_by_the_size_of_a_doubtful_clump() -> None:
    objects = np.zeros((60, 120), np.int32)
    doubt = np.zeros(objects.shape, np.float32)
    for k in range(5):  # a clump of five moderately doubtful cells, one object
        objects[5:15, 5 + 10 * k : 15 + 10 * k] = 1
    doubt[objects == 1] = 0.5
    objects[30:40, 70:80] = 2  # one very doubtful cell
    doubt[30:40, 70:80] = 0.9
    objects[30:40, 90:100] = 3  # a cell every view agrees on
    objects[30:40, 105:115] = 4  # a cell the views barely disagree on: still a place, last
    doubt[30:40, 105:115] = 0.05
    doubt[45:55, 20:30] = 0.7  # a cell the unturned view missed
    places = rank_places(doubt, objects, cell_area=100.0)
    assert [(p.y, p.x) for p in places] == [(34.5, 74.5), (49.5, 24.5), (9.5, 29.5), (34.5, 109.5)]
    assert [round(p.score, 3) for p in places] == [0.9, 0.7, 0.5, 0.05]
    assert places[2].area == 500 and places[2].mean == pytest.approx(0.5)


def test_a_place_point_lies_on_its_place_and_never_on_known_pixels() -> None:
    objects = np.zeros((40, 40), np.int32)
    objects[5:35, 5:35] = 1
    objects[10:30, 10:35] = 0  # a C-shaped object: its centroid falls in the gap
    doubt = np.where(objects > 0, 0.8, 0.0).astype(np.float32)
    (place,) = rank_places(doubt, objects, cell_area=100.0)
    assert objects[round(place.y), round(place.x)] == 1
    known = np.zeros(objects.shape, bool)
    known[:, :20] = True  # the left half is annotated
    doubt[known] = 0.0
    (place,) = rank_places(doubt, objects, cell_area=100.0, known=known)
    assert (
        objects[round(place.y), round(place.x)] == 1 and not known[round(place.y), round(place.x)]
    )
    assert place.area == int((objects > 0)[:, 20:].sum())


@pytest.mark.parametrize("seed", [3, 7])
def test_map_ranks_the_ambiguous_half_above_the_clean_half(model, seed: int) -> None:
    image = clean_and_ambiguous(seed)
    events = []
    result = run_sync(uncertainty_iter(model, image), events.append)
    doubt = result.map
    assert doubt.shape == image.shape and doubt.dtype == np.float32
    assert doubt.min() >= 0.0 and doubt.max() <= 1.0
    assert doubt[:, HALF:].mean() > 2.0 * doubt[:, :HALF].mean()
    places = result.places
    assert places and places[0].x >= HALF, places[:3]
    scores = [p.score for p in places]
    assert scores == sorted(scores, reverse=True)
    # Every object is ranked, however slight its doubt; the clearly doubtful ones (mean doubt
    # at the map's threshold or more) are the ambiguous half's.
    clear = [p for p in places if p.mean >= THRESHOLD]
    right = sum(p.score for p in clear if p.x >= HALF)
    assert clear and right > 3.0 * sum(p.score for p in clear if p.x < HALF)
    assert all(p.area > 0 and 0.0 < p.mean <= 1.0 for p in places)
    assert len([e for e in events if e.message.startswith("Predicting view")]) == N_VIEWS


def test_annotated_pixels_are_left_out(model) -> None:
    # A low place threshold, so that places remain once the top one is annotated (how many
    # pass the default depends on the tiny model's training, machine to machine).
    image = clean_and_ambiguous(3)
    before = where_to_annotate(model, image, diameter=16.0, threshold=0.1)
    assert len(before.places) >= 2
    top = before.places[0]
    annotation = np.zeros(image.shape, np.uint16)  # 0 = not annotated
    y, x = round(top.y), round(top.x)
    annotation[max(0, y - 30) : y + 30, max(0, x - 30) : x + 30] = 1  # painted background
    after = where_to_annotate(model, image, diameter=16.0, annotation=annotation, threshold=0.1)
    assert not after.map[annotation > 0].any()
    np.testing.assert_array_equal(after.map[annotation == 0], before.map[annotation == 0])
    assert all(annotation[round(p.y), round(p.x)] == 0 for p in after.places)
    assert (after.places[0].y, after.places[0].x) != (top.y, top.x)


def test_bad_input_and_cancel(model) -> None:
    image = clean_and_ambiguous(3)
    with pytest.raises(BadInputError, match="one 2D image"):
        where_to_annotate(model, np.stack([image, image]), axes="ZYX")
    with pytest.raises(BadInputError, match="same pixels"):
        where_to_annotate(model, image, annotation=np.zeros((5, 5), np.uint16))
    with pytest.raises(BadInputError, match="diameter"):
        where_to_annotate(model, image, diameter=-3.0)
    blank = where_to_annotate(model, np.zeros((64, 64), np.uint16))
    assert not blank.map.any() and blank.places == ()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        run_sync(uncertainty_iter(model, image, cancel=cancel))
