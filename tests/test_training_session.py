"""The one training session driver: annotation updates while training, finite checks, cancel.

``train_iter`` (sparse segmentation) and ``train_counter_iter`` (counting) both run on
:class:`napari_cellsparse.models.session.TrainingSession`; these tests check what it reports
after an annotation update (not when: only the step events' info), that a bad update never
stops the training, and that a diverged counter keeps its previous version.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cellsparse.core.errors import BadInputError, TrainingDivergedError
from napari_cellsparse.core.progress import Progress, run_sync
from napari_cellsparse.models.session import TrainingSession
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import list_models, models_dir, train_iter

TINY = {"base_filters": 8, "depth": 2, "patch_size": 64, "batch_size": 2}
COUNTER = {"encoder_depth": 3, "decoder_width": 8, "patch_size": 64, "batch_size": 2}


def annotated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image, its sparse annotation (4 cells) and the same with one more cell painted."""
    image, truth = make_nuclei((128, 128), n_objects=16, radius=(7.0, 9.0), seed=1)
    ann = sparse_from_truth(image, truth, k=2, band=10)
    free = [i for i in range(1, truth.max() + 1) if not ann[truth == i].any()]
    more = ann.copy()
    more[truth == free[0]] = ann.max() + 1
    return image, ann, more


def drain(work) -> tuple[object, dict[int, Progress]]:
    """Run a training generator; its result and its step events by step."""
    events: list[Progress] = []
    result = run_sync(work, events.append)
    return result, {e.step: e for e in events if "loss" in e.info}


class Answers:
    """An ``updates`` callable that gives ``first`` once, then nothing new."""

    def __init__(self, first: object) -> None:
        self.first = first
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.first if self.calls == 1 else None


# -- the driver alone -----------------------------------------------------------------


def session(name: str = "s") -> TrainingSession:
    return TrainingSession(models_dir() / name, "unet", 1)


def test_skipped_steps_may_have_no_loss_but_a_nan_loss_diverges() -> None:
    fine = session()
    steps = iter([{"loss": 1.0}, {"loss": float("nan"), "skipped": 1.0}, {"loss": 0.5}])
    assert [e.step for e in fine.run(steps, 3, "Training", 1e-3)] == [1, 2, 3]
    diverged = session()
    steps = iter([{"loss": 1.0}, {"loss": float("inf")}])
    with pytest.raises(
        TrainingDivergedError, match=r"step 2 .*now 0\.001 \(for example to 0\.0001"
    ):
        list(diverged.run(steps, 2, "Training", 1e-3))
    with pytest.raises(BadInputError, match="update_every"):
        list(session().run(iter([]), 1, "Training", 1e-3, updates=list, update_every=0))


def test_cancel_stops_before_the_next_step_and_updates_are_polled_between_steps() -> None:
    stop = threading.Event()
    polled: list[int] = []
    run = session()

    def updates() -> None:
        polled.append(run.done)
        if run.done == 4:
            stop.set()

    steps = ({"loss": 1.0} for _ in range(10))
    events = list(run.run(steps, 10, "Training", 1e-3, stop, updates, 2, rebuild=lambda u: None))
    assert [e.step for e in events] == [1, 2, 3, 4, 5] and run.stopped
    assert polled == [2, 4]
    assert run.record()["stopped_early"] is True and run.record()["steps"] == 5


# -- sparse training ---------------------------------------------------------------------


def test_painting_one_more_cell_while_training_is_used_and_reported() -> None:
    image, ann, more = annotated()
    updates = Answers([more])
    work = train_iter(
        "unet", image, ann, name="live", steps=6, updates=updates, update_every=2, **TINY
    )
    model, steps = drain(work)
    assert updates.calls == 2  # after steps 2 and 4
    start, after = steps[1].info["annotation"], steps[3].info["annotation"]
    assert start["cells"] == 4 and after["cells"] == 5
    assert after["trusted_pixels"] > start["trusted_pixels"]
    assert "5 annotated cells" in steps[3].message
    assert "annotation" not in steps[2].info and "annotation" not in steps[5].info
    session = list_models()[0]["sessions"][-1]
    assert session["annotated_cells"] == 5 and session["annotation_updates"] == 1
    assert model.info["steps"] == 6


@pytest.mark.parametrize(
    ("bad", "message"),
    [(lambda ann: [ann[:-1]], "shape"), (lambda ann: [np.zeros_like(ann)], "Nothing is annotated")],
)
def test_an_unusable_update_keeps_training_on_the_old_annotation(bad, message: str) -> None:
    image, ann, _ = annotated()
    work = train_iter(
        "unet", image, ann, name="bad", steps=4, updates=Answers(bad(ann)), update_every=2, **TINY
    )
    model, steps = drain(work)
    assert message in steps[3].info["annotation_error"]
    assert "annotation" not in steps[3].info
    assert model.info["steps"] == 4 and list_models()[0]["sessions"][-1]["annotated_cells"] == 4


# -- counting ------------------------------------------------------------------------------


def nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generated image, its exact centres and painted background (> 6 px from nuclei)."""
    image, labels = make_nuclei((128, 128), n_objects=16, radius=(5.0, 7.0), seed=2)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, np.arange(1, labels.max() + 1)))
    return image, centres, ndi.distance_transform_edt(labels == 0) > 6


def test_counter_trains_on_more_points_given_while_training() -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from napari_cellsparse.counting import train_counter_iter

    image, centres, background = nuclei()
    updates = Answers({"points": [centres]})
    work = train_counter_iter(
        image,
        centres[:4],
        name="live",
        background=background,
        steps=4,
        updates=updates,
        update_every=2,
        **COUNTER,
    )
    _, steps = drain(work)
    start, after = steps[1].info["annotation"], steps[3].info["annotation"]
    assert start["cells"] == 4 and after["cells"] == len(centres)
    assert after["trusted_pixels"] > start["trusted_pixels"]
    assert f"{len(centres)} points" in steps[3].message
    assert list_models()[0]["sessions"][-1]["points"] == len(centres)

    work = train_counter_iter(
        image,
        centres[:4],
        name="live",
        steps=4,
        updates=Answers({"points": np.zeros((0, 2))}),
        update_every=2,
    )
    _, steps = drain(work)
    assert "No points" in steps[3].info["annotation_error"]


def test_diverged_counter_keeps_its_previous_version() -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from napari_cellsparse.counting import load_counter, train_counter

    image, centres, background = nuclei()
    train_counter(image, centres, name="c", background=background, steps=2, **COUNTER)
    before = load_counter("c").count(image)
    listed = list_models()
    with pytest.raises(TrainingDivergedError, match=r"counter 'c' is kept.*now 1e\+30"):
        train_counter(image, centres, name="c", background=background, steps=6, learning_rate=1e30)
    after = load_counter("c").count(image)
    assert after.count == before.count
    np.testing.assert_array_equal(after.centres, before.centres)
    assert list_models() == listed
