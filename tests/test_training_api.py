"""The shared sparse-training code, exercised through the 3-class U-Net backend.

Convention, storage, scale, stacks, cancel and bad input are backend-independent, so they are
tested here once with the U-Net (pure PyTorch, always installed with the test extra); the
StarDist and Cellpose backends have their own files for their losses and training.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from stardist.matching import matching

from napari_cellsparse.core.errors import BackendUnavailableError, BadInputError, WeightsError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.core.sparse_labels import to_internal
from napari_cellsparse.models.scale import rescale_image, resize_labels
from napari_cellsparse.models.store import current_folder
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import list_models, load_model, train
from napari_cellsparse.training.inputs import prediction_slices, training_pairs
from napari_cellsparse.training.unet import unet_loss, unet_targets

TINY = {"base_filters": 8, "patch_size": 64, "batch_size": 4}


def blobs(seed: int = 1, shape: tuple[int, int] = (160, 160)) -> tuple[np.ndarray, np.ndarray]:
    """Separated synthetic nuclei (diameter about 16 px) and their ground truth."""
    return make_nuclei(shape, n_objects=24, radius=(7.0, 9.0), seed=seed)


def sparse(image: np.ndarray, truth: np.ndarray, k: int = 3) -> np.ndarray:
    return sparse_from_truth(image, truth, k=k, band=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One U-Net trained on 6 annotated cells of a synthetic image (its own model store)."""
    home = tmp_path_factory.mktemp("home")
    image, truth = blobs()
    losses: list[float] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(home))
        model = train(
            "unet",
            image,
            sparse(image, truth),
            name="blobs",
            steps=120,
            progress=lambda s, n, info: losses.append(info["loss"]),
            **TINY,
        )
    return model, image, truth, losses, home


# -- the annotation convention and input checks --------------------------------------------


def test_layer_convention_maps_to_internal_form() -> None:
    layer = np.array([[0, 1, 2, 3]], np.uint16)
    assert to_internal(layer).tolist() == [[-1, 0, 1, 2]]
    with pytest.raises(BadInputError, match="integer"):
        to_internal(layer.astype(np.float32))


def test_sparse_from_truth_keeps_darkest_and_brightest_with_background_band() -> None:
    image, truth = blobs()
    ann = sparse(image, truth, k=2)
    assert len(np.unique(ann[ann >= 2])) == 4
    assert (ann[truth == 0] <= 1).all()
    assert (ann == 1).any() and (ann == 0).any()
    full = sparse_from_truth(image, truth, k=None)
    assert (full > 0).all() and len(np.unique(full[full >= 2])) == truth.max()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda img, ann: (img, ann[:-1]), "same pixels"),
        (lambda img, ann: (img, np.where(ann >= 2, 1, ann)), "no annotated cell"),
        (lambda img, ann: (img, np.where(ann == 1, 0, ann)), "no background"),
        (lambda img, ann: (img, np.zeros_like(ann)), "Nothing is annotated"),
        (lambda img, ann: (np.where(ann == 2, np.nan, img.astype(np.float32)), ann), "NaN"),
        (lambda img, ann: ([img, img], [ann]), "2 image"),
        (lambda img, ann: ([], []), "No images"),
    ],
)
def test_bad_training_input_is_refused_clearly(change, message: str) -> None:
    image, truth = blobs()
    images, labels = change(image, sparse(image, truth))
    with pytest.raises(BadInputError, match=message):
        train("unet", images, labels, name="bad", steps=1, **TINY)


def test_unknown_or_missing_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    image, truth = blobs()
    with pytest.raises(BadInputError, match="Unknown backend 'ilastik'"):
        train("ilastik", image, sparse(image, truth), steps=1)
    import napari_cellsparse.training.backend as backend

    real = backend.importlib.util.find_spec
    monkeypatch.setattr(
        backend.importlib.util, "find_spec", lambda m, *a: None if m == "torch" else real(m, *a)
    )
    with pytest.raises(BackendUnavailableError, match=r"pip install"):
        train("unet", image, sparse(image, truth), steps=1)
    assert list_models() == []


def test_channel_axes_and_stacks_are_split_into_2d_pairs() -> None:
    image, truth = blobs()
    ann = sparse(image, truth)
    yxc = np.stack([image, image // 2], axis=-1)
    cyx = np.moveaxis(yxc, -1, 0)
    assert [p[0].shape for p in training_pairs(yxc, ann)] == [(160, 160, 2)]
    assert [p[0].shape for p in training_pairs(cyx, ann)] == [(160, 160, 2)]
    stack_ann = np.stack([ann, np.zeros_like(ann), ann])
    pairs = training_pairs(np.stack([image] * 3), stack_ann)
    assert len(pairs) == 2  # the unannotated slice is skipped
    slices, shape = prediction_slices(np.stack([image] * 3), 1)
    assert len(slices) == 3 and shape == (3, 160, 160)
    with pytest.raises(BadInputError, match="axes"):
        prediction_slices(np.zeros((3, 4, 160), np.uint8), 1, axes="ZYXC")
    with pytest.raises(BadInputError, match="channel"):
        prediction_slices(yxc, 1, axes="YXC")


# -- the U-Net's masked loss -----------------------------------------------------------------


def test_unet_targets_border_centre_background_ignore() -> None:
    labels = -np.ones((1, 20, 20), np.int32)
    labels[0, :, :10] = 0
    labels[0, 5:15, 2:12] = 1
    t = unet_targets(labels, border_width=2)[0]
    assert t[10, 7] == 2 and t[5, 7] == 1 and t[10, 11] == 1
    assert t[0, 0] == 0 and t[0, 15] == -1 and t[10, 14] == -1


def test_unet_loss_ignores_targets_under_unannotated_pixels() -> None:
    import torch

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 3, 16, 16)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, 3, size=(2, 16, 16)))
    mask = torch.tensor(rng.random((2, 16, 16)) < 0.3)

    def loss_and_grad(t: torch.Tensor) -> tuple[float, np.ndarray]:
        x = logits.clone().requires_grad_(True)
        loss = unet_loss(x, t, mask)
        loss.backward()
        return float(loss.detach()), x.grad.numpy().copy()

    base = loss_and_grad(targets)
    changed = torch.where(mask, targets, (targets + 1) % 3)
    same = loss_and_grad(changed)
    assert same[0] == pytest.approx(base[0], abs=1e-7)
    np.testing.assert_allclose(same[1], base[1], atol=1e-8)
    assert not base[1][~mask.numpy()[:, None].repeat(3, 1)].any()
    on_annotated = torch.where(mask, (targets + 1) % 3, targets)
    assert abs(loss_and_grad(on_annotated)[0] - base[0]) > 1e-3


def test_unet_rate_is_constant_when_asked_after_a_one_cycle_session() -> None:
    """``one_cycle=false`` trains at the configured rate, also after a one-cycle session
    (which leaves the optimiser at its annealed end)."""
    from napari_cellsparse.training.config import UNetConfig
    from napari_cellsparse.training.sampling import SparseDataset
    from napari_cellsparse.training.unet import UNetNetwork

    image, truth = make_nuclei((64, 64), 4, radius=(6.0, 8.0), seed=0)
    labels = np.where(truth > 0, truth, 0).astype(np.int32)
    data = SparseDataset([(image / image.max()).astype(np.float32)[..., None]], [labels])
    config = UNetConfig.from_settings(base_filters=4, depth=2, patch_size=32, batch_size=2)
    network = UNetNetwork(config, 1, "cpu")
    network.build()
    rng = np.random.default_rng(0)
    cycle = [network.optimizer.param_groups[0]["lr"] for _ in network.train_steps(data, 6, rng)]
    network.config = replace(config, one_cycle=False)
    constant = [network.optimizer.param_groups[0]["lr"] for _ in network.train_steps(data, 3, rng)]
    assert min(cycle) < config.learning_rate / 100 and cycle[-1] != config.learning_rate
    assert constant == [config.learning_rate] * 3


def test_annotated_scores_judge_outlines_that_f1_at_iou_05_accepts() -> None:
    """Cells grown past their outline still match at IoU 0.5 but not at 0.8-0.9: the
    outline-aware score (the mean over IoU 0.5-0.9) drops, F1 at 0.5 does not."""
    from skimage.segmentation import expand_labels

    from napari_cellsparse.training.evaluate import IOU_LEVELS, annotated_f1, annotated_scores

    _, truth = make_nuclei((96, 96), 6, radius=(6.0, 8.0), seed=2)
    truth = truth.astype(np.int32)
    exact = annotated_scores([truth], [truth])
    np.testing.assert_array_equal(exact, np.ones(len(IOU_LEVELS)))
    grown = annotated_scores([expand_labels(truth, 2)], [truth])
    assert grown[0] == 1.0 == annotated_f1([expand_labels(truth, 2)], [truth])
    assert grown[-1] == 0.0 and 0.0 < grown.mean() < 1.0


def test_tunings_judge_the_annotated_boxes_within_their_budget() -> None:
    """Each image's annotated box grown by the margin (from row and column 0 at least);
    images without annotation are skipped; a budget stops after the image that spends it."""
    from napari_cellsparse.training.evaluate import judged_windows

    labels = [np.full((50, 60), -1, np.int32) for _ in range(4)]
    labels[0][10:20, 30:35] = 0
    labels[2][0:5, 50:60] = 3
    labels[3][40:50, 0:10] = 2
    windows = judged_windows(labels, margin=8)
    assert windows == [
        (0, slice(2, 28), slice(22, 43)),
        (2, slice(0, 13), slice(42, 68)),
        (3, slice(32, 58), slice(0, 18)),
    ]
    budgeted = judged_windows(labels, margin=8, budget=1, seed=0)
    assert len(budgeted) == 1 and budgeted[0] in windows


def test_unet_thresholds_fit_the_outlines_and_ties_go_to_the_defaults(monkeypatch) -> None:
    """The tuning scores settings by the annotated F1 averaged over IoU 0.5-0.9; settings
    less than one annotated cell apart (at most 1/30) keep the defaults (splitting at necks
    first), settings ahead by more win, with or without the split."""
    from napari_cellsparse.training import unet
    from napari_cellsparse.training.config import UNetConfig, UNetThresholds
    from napari_cellsparse.training.evaluate import IOU_LEVELS
    from napari_cellsparse.training.sampling import SparseDataset

    image, truth = make_nuclei((64, 64), 4, radius=(6.0, 8.0), seed=0)
    labels = np.where(truth > 0, truth, 0).astype(np.int32)
    data = SparseDataset([(image / image.max()).astype(np.float32)[..., None]], [labels])
    config = UNetConfig.from_settings(base_filters=4, depth=2, patch_size=32, batch_size=2)
    network = unet.UNetNetwork(config, 1, "cpu")
    network.build()
    default = UNetThresholds()
    loosest = (min(unet.CENTRE_GRID), min(unet.FOREGROUND_GRID))
    grid = [
        (s, c, f) for s in (True, False) for c in unet.CENTRE_GRID for f in unet.FOREGROUND_GRID
    ]

    def tune(lead: float, at: tuple[bool, float, float], at_05: float = 0.7) -> UNetThresholds:
        scores = iter([lead if p == at else 0.7 for p in grid])
        levels = len(IOU_LEVELS)
        monkeypatch.setattr(
            unet,
            "annotated_scores",
            lambda preds, truths: np.array([at_05] + [next(scores)] * (levels - 1)),
        )
        return network.find_thresholds(data)

    def chosen(t: UNetThresholds) -> tuple[bool, float, float]:
        return t.split_necks, t.centre_threshold, t.foreground_threshold

    defaults = (True, default.centre_threshold, default.foreground_threshold)
    for at in ((True, *loosest), (False, *loosest), (False, *defaults[1:])):
        tied = tune(0.7 + 1.0 / 30, at)  # 4 cells, but a tie stays within 1/30
        assert chosen(tied) == defaults
        assert tied.tuned_annotated_f1 == 0.7  # the F1 at IoU 0.5 of the chosen setting
        assert chosen(tune(0.75, at)) == at


# -- training, storage, prediction -----------------------------------------------------------


def test_short_training_reduces_loss_and_segments_blobs(trained) -> None:
    model, image, truth, losses, _ = trained
    assert len(losses) == 120
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])
    pred = model.predict(image)
    assert pred.dtype == np.int32 and pred.shape == image.shape
    assert matching(truth, pred, thresh=0.5).f1 >= 0.8


def test_model_store_round_trip_gives_identical_predictions(trained, monkeypatch) -> None:
    model, image, _, _, home = trained
    monkeypatch.setenv(HOME_ENV, str(home))
    [meta] = list_models()
    assert meta["name"] == "blobs" and meta["backend"] == "unet" and meta["steps"] == 120
    assert {"created", "images", "versions", "sessions"} <= set(meta)
    for source in ("blobs", model.folder):
        again = load_model(source)
        np.testing.assert_array_equal(again.predict(image), model.predict(image))


def test_new_image_at_another_scale_is_rescaled_automatically(trained) -> None:
    model, image, truth, _, _ = trained
    big = rescale_image(image[..., None].astype(np.float32), 2.0)[..., 0]
    big_truth = resize_labels(truth, big.shape)
    pred = model.predict(big)
    train_d = model.scale.train_diameter
    assert model.info["last_diameters"][0] == pytest.approx(2 * train_d, rel=0.25)
    assert matching(big_truth, pred, thresh=0.5).f1 >= 0.7
    model.predict(big, diameter=train_d)  # a diameter given by the user is used as it is
    assert model.info["last_diameters"] == [train_d]


def test_a_few_outstanding_cells_do_not_set_the_scale_of_new_images() -> None:
    """A person annotates the cells that stand out, often smaller or larger than most: two
    cells an image must not recalibrate the diameter estimate that rescales new images."""
    from napari_cellsparse.training.api import _prepare

    made = [make_nuclei((192, 192), n_objects=24, radius=(6.0, 11.0), seed=s) for s in (4, 5, 6)]
    images = [image for image, _ in made]

    def calibration(annotations: list[np.ndarray]) -> float:
        pairs = training_pairs(images, annotations)
        return _prepare(pairs, 20.0)[1].diameter_calibration

    every_cell = calibration([sparse_from_truth(i, t, k=None) for i, t in made])
    smallest = []
    for _, truth in made:
        ids, areas = np.unique(truth[truth > 0], return_counts=True)
        annotation = np.zeros(truth.shape, np.uint16)
        chosen = np.isin(truth, ids[np.argsort(areas)[:2]])
        annotation[ndimage.binary_dilation(chosen, iterations=10) & (truth == 0)] = 1
        annotation[chosen] = truth[chosen] + 1
        smallest.append(annotation)
    assert abs(np.log(calibration(smallest) / every_cell)) < np.log(1.15)


def test_the_calibration_is_trusted_as_far_as_the_annotation_covers_the_cells() -> None:
    from napari_cellsparse.models.scale import shrunk_calibration

    assert shrunk_calibration(1.2, 1.0) == pytest.approx(1.2)
    assert shrunk_calibration(1.2, 3.0) == pytest.approx(1.2)
    assert shrunk_calibration(0.8, 0.0) == 1.0
    assert shrunk_calibration(0.64, 0.5) == pytest.approx(0.8)
    assert shrunk_calibration(float("nan"), 0.5) == shrunk_calibration(0.0, 0.5) == 1.0


def test_a_model_that_finds_none_of_its_annotated_cells_says_so(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Tuning found no threshold at which the model finds any annotated cell: the person
    is told (engine, CLI) instead of getting a model that predicts nothing."""
    from napari_cellsparse.cli._common import print_trained
    from napari_cellsparse.training.config import UNetThresholds
    from napari_cellsparse.training.unet import UNetNetwork

    assert "warning" not in trained[0].info
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    monkeypatch.setattr(
        UNetNetwork, "find_thresholds", lambda self, data: UNetThresholds(tuned_annotated_f1=0.0)
    )
    image, truth = blobs()
    model = train("unet", image, sparse(image, truth), name="blind", steps=2, **TINY)
    assert "none of the annotated cells" in model.info["warning"]
    print_trained("unet model", model, "cpu")
    assert "warning: The model finds none" in capsys.readouterr().out


def test_stack_prediction_has_unique_ids_across_slices(trained) -> None:
    model, image, _, _, _ = trained
    stack = np.stack([image, image[::-1]])
    pred = model.predict(stack, axes="ZYX")
    assert pred.shape == stack.shape
    ids0, ids1 = set(np.unique(pred[0])) - {0}, set(np.unique(pred[1])) - {0}
    assert ids0 and ids1 and not ids0 & ids1
    assert model.predict(np.zeros((64, 64), np.uint16)).max() == 0
    with pytest.raises(BadInputError, match="positive"):
        model.predict(image, diameter=-3)


def test_predict_iter_reports_each_slice_and_stops_when_cancelled(trained) -> None:
    from napari_cellsparse.core.errors import CancelledError
    from napari_cellsparse.core.progress import run_sync

    model, image, _, _, _ = trained
    stack = np.stack([image, image[::-1], image.T])
    events = []
    pred = run_sync(model.predict_iter(stack, axes="ZYX"), events.append)
    np.testing.assert_array_equal(pred, model.predict(stack, axes="ZYX"))
    assert [(e.step, e.total, e.message) for e in events] == [
        (k, 3, f"Predicting slice {k + 1}/3") for k in range(3)
    ]
    assert [e.message for e in model.predict_iter(image)] == ["Predicting"]
    stop = threading.Event()
    work = model.predict_iter(stack, axes="ZYX", cancel=stop)
    next(work)
    stop.set()
    with pytest.raises(CancelledError):
        next(work)


def test_cancel_stops_at_the_next_step_and_saves() -> None:
    image, truth = blobs()
    stop = threading.Event()
    seen: list[int] = []

    def progress(step: int, total: int, info: dict) -> None:
        seen.append(step)
        if step == 3:
            stop.set()

    model = train(
        "unet",
        image,
        sparse(image, truth),
        name="stopped",
        steps=50,
        progress=progress,
        cancel=stop,
        **TINY,
    )
    assert seen == [1, 2, 3]
    assert model.info["stopped_early"] is True
    assert load_model("stopped").info["steps"] == 3


def test_training_again_continues_unless_reset() -> None:
    image, truth = blobs()
    ann = sparse(image, truth)
    first = train("unet", image, ann, name="again", steps=4, **TINY)
    second = train("unet", image, ann, name="again", steps=3)
    assert second.info["steps"] == 7 and len(second.info["sessions"]) == 2
    assert second.config.base_filters == 8  # the stored architecture is kept
    assert not np.array_equal(
        first.network.net.head.weight.detach().numpy(),
        second.network.net.head.weight.detach().numpy(),
    )
    fresh = train("unet", image, ann, name="again", steps=2, reset=True, **TINY)
    assert fresh.info["steps"] == 2 and len(fresh.info["sessions"]) == 1
    with pytest.raises(BadInputError, match="another number of channels"):
        train("unet", np.stack([image, image], -1), ann, name="again", steps=1)


def test_damaged_model_folders_give_clear_errors() -> None:
    image, truth = blobs()
    model = train("unet", image, sparse(image, truth), name="damaged", steps=1, **TINY)
    folder = current_folder(model.folder)  # the current version's files
    (folder / "unet.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="damaged"):
        load_model("damaged")
    (folder / "unet.pt").unlink()
    with pytest.raises(WeightsError, match="no weights file"):
        load_model("damaged")
    (folder / "metadata.json").write_text("{broken")
    with pytest.raises(WeightsError, match="damaged"):
        load_model(folder)
    assert "error" in list_models()[0]
    (folder / "metadata.json").unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        load_model(folder)
    with pytest.raises(BadInputError, match="No model called 'nothing'"):
        load_model("nothing")
    with pytest.raises(BadInputError, match="cannot be a model name"):
        train("unet", image, sparse(image, truth), name="../escape", steps=1)


def test_unknown_setting_is_refused() -> None:
    image, truth = blobs()
    with pytest.raises(BadInputError, match="Unknown setting"):
        train("unet", image, sparse(image, truth), steps=1, patch=64)


def test_cli_train_then_predict_writes_labels_and_table(tmp_path: Path, capsys) -> None:
    import tifffile

    from napari_cellsparse.cli import main

    settings = [f"{k}={v}" for k, v in TINY.items()]
    assert (
        main(
            [
                "train",
                "--image",
                "sample:nuclei",
                "--labels",
                "sample:nuclei",
                "--name",
                "cli",
                "--steps",
                "2",
                "--set",
                *settings,
            ]
        )
        == 0
    )
    assert "trained unet model 'cli'" in capsys.readouterr().out
    assert (
        main(["predict", "--model", "cli", "--image", "sample:nuclei", "--out", str(tmp_path)]) == 0
    )
    labels = tifffile.imread(tmp_path / "sample_nuclei_labels.tif")
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    rows = (tmp_path / "sample_nuclei_objects.csv").read_text().splitlines()
    assert rows[0].startswith("id,centroid_y,centroid_x,area") and len(rows) == labels.max() + 1
    assert main(["models"]) == 0
    assert "cli\tunet\t2 steps" in capsys.readouterr().out
    assert main(["predict", "--model", "nothing", "--image", "sample:nuclei"]) == 2
    assert (
        main(["train", "--image", "sample:nuclei", "--labels", "sample:nuclei", "--set", "patch"])
        == 2
    )
    json.dumps(list_models())


def test_headless_pipeline_finds_the_sample_nuclei_and_nothing_oversized(tmp_path):
    """``make headless`` (its U-Net defaults, fewer steps): the sample's nuclei are found
    and no object spreads over the background (the tuning once kept its loosest thresholds,
    all scoring alike on the annotated pixels, and grew a third of the image into cells)."""
    import tifffile

    from napari_cellsparse.cli import main
    from napari_cellsparse.samples.catalog import load_sample
    from napari_cellsparse.training.config import UNetThresholds

    argv = ["--image", "sample:nuclei", "--labels", "sample:nuclei", "--name", "sample-unet"]
    assert main(["train", "--backend", "unet", *argv, "--reset", "--steps", "120"]) == 0
    out = tmp_path / "predict"
    predict = ["predict", "--model", "sample-unet", "--image", "sample:nuclei", "--out", str(out)]
    assert main(predict) == 0
    (written,) = out.glob("*.tif")
    labels = tifffile.imread(written)
    truth = load_sample("nuclei").labels
    assert matching(truth, labels, thresh=0.5).f1 >= 0.9
    assert np.bincount(labels.ravel())[1:].max() <= 4 * np.bincount(truth.ravel())[1:].max()

    model = load_model("sample-unet")
    default = UNetThresholds()  # the few annotated cells score the centre levels alike
    assert model.thresholds.centre_threshold == default.centre_threshold
    capped = 0.8  # narrower than most cells: they go
    model.network.config = replace(model.config, max_size_factor=capped)
    areas = np.bincount(model.predict(load_sample("nuclei").image).ravel())[1:]
    kept = areas[areas > 0]
    assert 0 < len(kept) < int(labels.max())
    widest = (
        model.scale.widest_cell * model.info["last_diameters"][0] / model.config.target_diameter
    )
    assert kept.max() <= np.pi / 4 * (capped * widest * 1.2) ** 2  # resizing back rounds up


def test_objects_far_from_the_annotated_sizes_are_left_out(trained):
    """Slivers narrower than ``min_size_factor`` times the narrowest annotated cell and
    clumps wider than ``max_size_factor`` times the widest are no cells (training scale)."""
    model = trained[0]
    narrowest, widest = model.scale.narrowest_cell, model.scale.widest_cell
    assert 4 < narrowest <= widest < 3 * narrowest  # the blobs' cells: 14-18 px
    side = int(widest) + 2
    labels = np.zeros((8 * side, 8 * side), np.int32)
    labels[:2, :2] = 1  # a sliver at the edge
    labels[side : 2 * side, side : 2 * side] = 2  # as wide as the annotated cells
    labels[3 * side :, 3 * side :] = 3  # a clump 5x as wide as the widest cell
    kept = np.unique(model._without_out_of_size(labels))
    assert kept.tolist() == [0, 2]
    config = model.config
    model.network.config = replace(config, min_size_factor=0.0, max_size_factor=0.0)
    try:
        assert np.unique(model._without_out_of_size(labels)).tolist() == [0, 1, 2, 3]
    finally:
        model.network.config = config


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_short_trainings_run_whatever_their_step_count(steps):
    """The one-cycle schedule divided by zero at 10 steps (a warm-up of one step)."""
    image, truth = blobs()
    model = train("unet", image, sparse(image, truth), name=f"short-{steps}", steps=steps, **TINY)
    assert model.info["steps"] == steps


def test_predictions_keep_only_objects_that_stand_out_as_the_annotated_cells_do(trained):
    """The model measures how far its annotated cells stand out of their surroundings and
    leaves out predicted objects below its floor (noise answered as cells, see
    ``training.contrast``). With the floor raised to the median of its own objects, about
    half of the generated nuclei go, the fainter ones. The floor applies at the training
    scale, where the same objects measure lower than at the image's own (interpolation):
    the median is taken there, as the model measures them."""
    from napari_cellsparse.core.images import as_yxc, normalize
    from napari_cellsparse.models.scale import cell_signal
    from napari_cellsparse.training.contrast import RING, object_snr

    model, image, _, _, _ = trained
    assert model.scale.cell_snr > 2 * model.config.min_snr  # the blobs stand out plainly
    everything = model.predict(image)
    d = model.info["last_diameters"][0]
    normalized = normalize(as_yxc(image))
    _, snr = object_snr(everything, normalized.mean(-1), RING * d)
    assert snr.min() >= model.config.min_snr
    scaled = rescale_image(normalized, model.config.target_diameter / d)
    _, snr_scaled = object_snr(
        resize_labels(everything, scaled.shape[:2]),
        cell_signal(scaled, model.scale.polarity),
        RING * model.config.target_diameter,
    )
    middle = float(np.median(snr_scaled))
    config, scale = model.network.config, model.scale
    try:
        model.network.config = replace(config, min_snr=middle)
        model.scale = replace(scale, cell_snr=4 * middle)
        fewer = model.predict(image, diameter=d)
    finally:
        model.network.config, model.scale = config, scale
    _, kept = object_snr(
        resize_labels(fewer, scaled.shape[:2]),
        cell_signal(scaled, model.scale.polarity),
        RING * model.config.target_diameter,
        around=resize_labels(everything, scaled.shape[:2]) == 0,
    )
    assert 0.2 * len(snr) < len(kept) < 0.8 * len(snr)
    assert np.median(kept) > middle  # the faint half went
