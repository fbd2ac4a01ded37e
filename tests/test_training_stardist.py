"""The StarDist 2D backend: masked losses, a short training run, weights and pretrained models.

Everything runs on the CPU with a small network (the defaults are the upstream size) so the
whole file stays well under a minute on two cores.

TensorFlow never loads in the pytest process (it crashes beside a napari viewer's OpenGL): the
functions named ``_child_*`` run in two child processes (tests/_subprocess.py), one for the
checks of untrained or pretrained networks, one that trains a network and checks it. They
return numbers through JSON and arrays through ``.npy`` files; the tests assert on those.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage as ndi

from _subprocess import assert_raised, outcome, run_in_subprocess, value_of
from napari_cellsparse.core.errors import BackendUnavailableError, BadInputError, WeightsError
from napari_cellsparse.core.sparse_labels import IGNORE, to_internal
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.training.backend import backend_class
from napari_cellsparse.training.config import StarDistConfig, StarDistThresholds
from napari_cellsparse.training.evaluate import annotated_f1
from napari_cellsparse.training.sampling import Batch, SparseDataset
from napari_cellsparse.training.stardist_backend import WEIGHTS_FILE, StarDistNetwork
from napari_cellsparse.training.stardist_keras import import_tf

if importlib.util.find_spec("stardist") is None or importlib.util.find_spec("tensorflow") is None:
    pytest.skip("StarDist / TensorFlow are not installed", allow_module_level=True)

# A small, fast network for tests (the defaults are upstream's size).
SMALL = {
    "n_rays": 16,
    "unet_n_depth": 2,
    "unet_n_filter_base": 8,
    "net_conv_after_unet": 32,
    "patch_size": 64,
    "batch_size": 8,
    "learning_rate": 5e-3,
}
TRAIN_STEPS = 160
CYCLE_STEPS = 4


def small_network(n_channels: int = 1, **overrides: Any) -> StarDistNetwork:
    config = StarDistConfig.from_settings(**{**SMALL, **overrides})
    return StarDistNetwork(config, n_channels, "cpu")


def normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99.8))
    return ((image - lo) / (hi - lo)).astype(np.float32)[..., None]


def sparse_annotation(truth: np.ndarray, n_cells: int, seed: int) -> np.ndarray:
    """Layer convention: a few whole cells (2+), background (1) around them and in a band."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, truth.max() + 1), n_cells, replace=False)
    chosen = np.isin(truth, ids)
    annotation = np.zeros(truth.shape, np.int32)
    near = ndi.binary_dilation(chosen, iterations=5)
    band = np.zeros(truth.shape, bool)
    band[:32] = True
    annotation[(near | band) & (truth == 0)] = 1
    annotation[chosen] = truth[chosen] + 1
    return annotation


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, *arrays)


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


# -- registry and import boundary ---------------------------------------------------------


def test_registry_and_config_are_plain() -> None:
    cls = backend_class("stardist")
    assert cls is StarDistNetwork
    config = cls.config_class().as_dict()
    json.dumps(config)  # stored as config.json by the shared code
    assert config["n_rays"] == 32 and config["grid"] == [2, 2] and config["pretrained"] is None
    assert cls.weight_files == (WEIGHTS_FILE,)


def test_missing_dependency_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a)
    )
    with pytest.raises(BackendUnavailableError, match=r"napari-cellsparse\[stardist\]"):
        backend_class("stardist")


def test_module_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, napari_cellsparse.training.stardist_backend\n"
        "print('tensorflow' in sys.modules, 'stardist' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


# -- untrained and pretrained networks (one child process) --------------------------------


def _loss_and_gradients(
    net: StarDistNetwork, x: np.ndarray, prob: np.ndarray, dist: np.ndarray
) -> tuple[float, list[np.ndarray]]:
    """The compiled (upstream) loss of the network and its gradient w.r.t. every weight."""
    import tensorflow as tf

    keras_model = net.model.keras_model
    with tf.GradientTape() as tape:
        y_pred = keras_model([x], training=True)
        loss = keras_model.compute_loss(x=x, y=[prob, dist], y_pred=y_pred)
    grads = tape.gradient(loss, keras_model.trainable_weights)
    return float(loss), [np.asarray(g) for g in grads]


def _child_losses(out: Path) -> dict[str, float]:
    """The loss and gradients for the targets of two crops, then for changed targets: the
    distances under the ignore mask (2), on cells (3), background called a cell (4)."""
    net = small_network()
    net.build()
    net._prepare()  # compiles with upstream's losses
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 64, 64), np.int32)
    yy, xx = np.mgrid[:64, :64]
    labels[0][(yy - 20) ** 2 + (xx - 20) ** 2 < 64] = 1
    labels[0][(yy - 40) ** 2 + (xx - 30) ** 2 < 49] = 2
    labels[1][(yy - 30) ** 2 + (xx - 15) ** 2 < 81] = 3
    labels[:, :, 44:] = IGNORE  # unannotated: right part of both crops
    labels[1, 50:, :] = IGNORE
    images = rng.random((2, 64, 64, 1), dtype=np.float32)
    x, prob, dist = net.targets(Batch(images, labels))
    np.save(out / "prob.npy", prob)
    np.save(out / "dist.npy", dist)
    ignored = prob[..., 0] == -1
    cells = prob[..., 0] > 0

    loss, grads = _loss_and_gradients(net, x, prob, dist)
    save_arrays(out / "grads.npz", grads)
    changed = dist.copy()
    changed[ignored, :-1] = rng.uniform(0, 40, (int(ignored.sum()), dist.shape[-1] - 1))
    loss2, grads2 = _loss_and_gradients(net, x, prob, changed)
    save_arrays(out / "grads2.npz", grads2)
    changed = dist.copy()
    changed[cells, :-1] = -50.0
    loss3, grads3 = _loss_and_gradients(net, x, prob, changed)
    save_arrays(out / "grads3.npz", grads3)
    flipped = prob.copy()
    flipped[prob == 0] = 1.0
    loss4, _ = _loss_and_gradients(net, x, flipped, dist)
    return {"loss": loss, "loss2": loss2, "loss3": loss3, "loss4": loss4}


def _child_tune_untrained() -> dict[str, Any]:
    raw, truth = make_nuclei((128, 128), 6, radius=(7.0, 11.0), seed=4)
    data = SparseDataset([normalise(raw)], [to_internal(sparse_annotation(truth, 2, seed=0))])
    net = small_network()
    net.build()
    config = net.config
    before = (net.thresholds.prob_thresh, net.thresholds.nms_thresh)
    updates = net.tune(data).as_dict()
    after = (net.thresholds.prob_thresh, net.thresholds.nms_thresh)
    return {"before": before, "updates": updates, "after": after, "same": net.config is config}


def _child_pretrained_offline() -> None:
    import csbdeep.models.pretrained as pretrained

    def offline(*args: Any, **kwargs: Any) -> None:
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(pretrained, "get_file", offline)
        small_network(pretrained="2D_versatile_fluo").build()


def _child_pretrained_used(out: Path) -> dict[str, Any]:
    """A small random StarDist2D stands in for ``2D_versatile_fluo``."""
    from stardist.models import Config2D, StarDist2D

    source = StarDist2D(
        Config2D(
            n_rays=8,
            grid=(2, 2),
            n_channel_in=1,
            unet_n_depth=1,
            unet_n_filter_base=4,
            net_conv_after_unet=8,
            train_tensorboard=False,
        ),
        name="fake",
        basedir=None,
    )
    source.thresholds = {"prob": 0.61, "nms": 0.33}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(StarDist2D, "from_pretrained", classmethod(lambda cls, name: source))
        net = small_network(pretrained="2D_versatile_fluo")
        net.build()
        image = np.random.default_rng(1).random((48, 48, 1), dtype=np.float32)
        expected, _ = source.predict(image, axes="YXC", verbose=0)
        np.save(out / "expected.npy", expected)
        np.save(out / "probabilities.npy", net.probabilities(image)[0])
        channels = outcome(
            lambda: small_network(n_channels=2, pretrained="2D_versatile_fluo").build()
        )
    return {
        "config": {**net.config.as_dict(), **net.thresholds.as_dict()},
        "channels": channels,
    }


def _child_targets_keep_the_batch_order() -> dict[str, bool]:
    """Targets of 8 different crops at once against each crop's targets alone."""
    net = small_network()
    net.build()
    crops = [make_nuclei((64, 64), 4, radius=(6.0, 9.0), seed=s) for s in range(8)]
    images = np.stack([normalise(img) for img, _ in crops])
    labels = np.stack([to_internal(sparse_annotation(t, 2, seed=0)) for _, t in crops])
    x, prob, dist = net.targets(Batch(images, labels.astype(np.int32)))
    alone = [net.targets(Batch(images[i : i + 1], labels[i : i + 1])) for i in range(8)]
    return {
        "images": bool(np.array_equal(x, images)),
        "prob": all(np.array_equal(prob[i], a[1][0]) for i, a in enumerate(alone)),
        "dist": all(np.array_equal(dist[i], a[2][0]) for i, a in enumerate(alone)),
    }


def _child_heads_start(out: Path) -> dict[str, Any]:
    """The output biases after a first step of a fresh network, and of one loaded from it."""
    raw, truth = make_nuclei((128, 128), 8, radius=(7.0, 10.0), seed=5)
    data = SparseDataset([normalise(raw)], [to_internal(sparse_annotation(truth, 3, seed=0))])
    net = small_network()
    net.build()
    heads = net.model.keras_model
    fresh = {"dist": float(np.abs(heads.get_layer("dist").get_weights()[1]).max())}
    first = next(net.train_steps(data, 1, np.random.default_rng(0)))
    _, prob, dist = net.targets(data.sample_batch(np.random.default_rng(1), 64, 64))
    inside = prob[..., 0] > 0
    started = {
        "dist": [float(b) for b in heads.get_layer("dist").get_weights()[1]],
        "prob": float(heads.get_layer("prob").get_weights()[1][0]),
        "mean_ray": float(dist[..., :-1][inside].mean()),
        "share": float(prob[prob >= 0].mean()),
        "dist_loss": first["dist_loss"],
    }
    net.save(out / "heads")
    again = small_network()
    again.load(out / "heads")
    before = again.model.keras_model.get_layer("dist").get_weights()[1].copy()
    next(again.train_steps(data, 1, np.random.default_rng(2)))
    after = again.model.keras_model.get_layer("dist").get_weights()[1]
    return {"fresh": fresh, "started": started, "loaded_moved": float(np.abs(after - before).max())}


def _child_average(tail: float) -> list[float]:
    """Each weight after 4 steps whose optimiser step sets every weight to 1, 2, 3 and 4."""
    raw, truth = make_nuclei((128, 128), 8, radius=(7.0, 10.0), seed=5)
    data = SparseDataset([normalise(raw)], [to_internal(sparse_annotation(truth, 3, seed=0))])
    net = small_network(average_tail=tail)
    net.build()
    keras_model = net.model.keras_model
    values = iter([1.0, 2.0, 3.0, 4.0])

    def train_on_batch(*args: Any, **kwargs: Any) -> dict[str, float]:
        value = next(values)
        keras_model.set_weights([np.full_like(w, value) for w in keras_model.get_weights()])
        return {"loss": 0.5}

    keras_model.train_on_batch = train_on_batch
    assert len(list(net.train_steps(data, 4, np.random.default_rng(0)))) == 4
    return sorted({float(v) for w in keras_model.get_weights() for v in np.unique(w)})


def _child_untrained_checks(folder: str) -> dict[str, Any]:
    import_tf()  # as the app does: quiet, fast NMS
    out = Path(folder)
    return {
        "order": outcome(_child_targets_keep_the_batch_order),
        "losses": outcome(_child_losses, out),
        "tune": outcome(_child_tune_untrained),
        "unknown": outcome(lambda: small_network(pretrained="2D_no_such_model").build()),
        "offline": outcome(_child_pretrained_offline),
        "pretrained": outcome(_child_pretrained_used, out),
        "heads": outcome(_child_heads_start, out),
        "average_half": outcome(_child_average, 0.5),
        "average_off": outcome(_child_average, 0.0),
    }


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outcomes of :func:`_child_untrained_checks`, and ``folder``, where it wrote arrays."""
    folder = tmp_path_factory.mktemp("stardist-untrained")
    return {"folder": folder, **run_in_subprocess(_child_untrained_checks, str(folder))}


# -- masked loss --------------------------------------------------------------------------


def test_loss_and_gradient_ignore_unannotated_pixels(untrained: dict[str, Any]) -> None:
    losses = value_of(untrained["losses"])
    folder = untrained["folder"]
    prob, dist = np.load(folder / "prob.npy"), np.load(folder / "dist.npy")
    ignored = prob[..., 0] == -1
    cells = prob[..., 0] > 0
    assert ignored.any() and cells.any() and (prob[..., 0] == 0).any()
    assert np.all(dist[..., -1][ignored] == 0)  # the distance loss weight is 0 there

    loss, grads = losses["loss"], load_arrays(folder / "grads.npz")
    assert np.isfinite(loss) and loss > 0

    # Anything written as distance target under the ignore mask changes nothing.
    loss2, grads2 = losses["loss2"], load_arrays(folder / "grads2.npz")
    assert loss2 == pytest.approx(loss, rel=1e-6)
    for a, b in zip(grads, grads2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)

    # A change on annotated cell pixels does change loss and gradient (the test can fail);
    # the distance loss is an absolute error, so the change must flip the error's sign.
    loss3, grads3 = losses["loss3"], load_arrays(folder / "grads3.npz")
    assert abs(loss3 - loss) > 1e-3
    pairs = zip(grads, grads3, strict=True)
    assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in pairs)
    # And so does calling annotated background a cell.
    assert abs(losses["loss4"] - loss) > 1e-3


def test_targets_keep_the_order_of_the_batch(untrained: dict[str, Any]) -> None:
    # Upstream's data sequence shuffles with numpy's global generator; the crops must come
    # back in our order, or a seed does not give the same model twice.
    assert value_of(untrained["order"]) == {"images": True, "prob": True, "dist": True}


def _child_weights_after_training(folder: str) -> str:
    """A hash of the weights after a few seeded steps (a fresh process each time)."""
    import hashlib

    import_tf()
    out = Path(folder)
    data = SparseDataset([np.load(out / "image.npy")], [np.load(out / "internal.npy")])
    net = small_network()
    net.build()
    for _ in net.train_steps(data, 4, np.random.default_rng(0)):
        pass
    weights = net.model.keras_model.get_weights()
    return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in weights)).hexdigest()


def test_a_seed_gives_the_same_weights_in_two_processes(trained: dict[str, Any]) -> None:
    folder = str(trained["folder"])
    first = run_in_subprocess(_child_weights_after_training, folder)
    assert run_in_subprocess(_child_weights_after_training, folder) == first


def test_tune_on_an_untrained_network_keeps_thresholds(untrained: dict[str, Any]) -> None:
    tuned = value_of(untrained["tune"])
    updates = tuned["updates"]
    assert tuned["same"]  # the configuration is the one the network was made with
    if updates["tuned_annotated_f1"] == 0.0:
        assert (updates["prob_thresh"], updates["nms_thresh"]) == tuple(tuned["before"])
        assert tuned["after"] == tuned["before"]


# -- pretrained models --------------------------------------------------------------------


def test_a_fresh_network_starts_its_outputs_at_the_annotation_average(untrained) -> None:
    """Fresh output layers say rays of 0 px; the distance loss of such a start dominated the
    first steps so strongly that the default network sometimes never learned where cells
    are. The first step starts them at the cells' mean ray and the annotated cell share;
    a network that was loaded keeps its own."""
    heads = value_of(untrained["heads"])
    started = heads["started"]
    assert heads["fresh"]["dist"] < 1e-6  # Keras starts biases at 0
    ray = started["mean_ray"]
    assert all(0.7 * ray <= b <= 1.3 * ray for b in started["dist"])
    share = 1.0 / (1.0 + np.exp(-started["prob"]))
    assert 0.5 * started["share"] <= share <= 1.5 * started["share"]
    assert started["dist_loss"] < 0.6 * ray  # about the spread of the rays, not their length
    assert heads["loaded_moved"] < 0.1  # one step of the optimiser, no restart


def test_training_ends_on_the_mean_of_its_last_steps(untrained: dict[str, Any]) -> None:
    """With ``average_tail`` every weight after the last step is the mean of its values after
    each of the last steps; without it, the last step's."""
    assert value_of(untrained["average_half"]) == [3.5]
    assert value_of(untrained["average_off"]) == [4.0]


def test_pretrained_unknown_name(untrained: dict[str, Any]) -> None:
    assert_raised(untrained["unknown"], BadInputError, match="2D_versatile_fluo")


def test_pretrained_offline_is_a_clear_weights_error(untrained: dict[str, Any]) -> None:
    assert_raised(untrained["offline"], WeightsError, match=r"2D_versatile_fluo.*internet")


def test_pretrained_weights_and_architecture_are_used(untrained: dict[str, Any]) -> None:
    pretrained = value_of(untrained["pretrained"])
    config = pretrained["config"]
    assert config["n_rays"] == 8 and config["unet_n_filter_base"] == 4
    assert config["unet_n_depth"] == 1 and config["net_conv_after_unet"] == 8
    assert (config["prob_thresh"], config["nms_thresh"]) == (0.61, 0.33)
    folder = untrained["folder"]
    expected = np.load(folder / "expected.npy")
    np.testing.assert_allclose(
        np.load(folder / "probabilities.npy"), expected, rtol=1e-5, atol=1e-6
    )
    assert_raised(pretrained["channels"], BadInputError, match="channel")


# -- a short training run (one child process) ---------------------------------------------


def _child_train_and_check(folder: str) -> dict[str, Any]:
    """Train and tune on ``image.npy`` / ``internal.npy``, then predict, save and load."""
    import_tf()  # as the app does: quiet, fast NMS
    out = Path(folder)
    image, internal = np.load(out / "image.npy"), np.load(out / "internal.npy")
    data = SparseDataset([image], [internal])
    net = small_network()  # the defaults: a constant rate, the mean of the last half
    net.build()
    rng = np.random.default_rng(0)
    losses = [info["loss"] for info in net.train_steps(data, TRAIN_STEPS, rng)]
    config = net.config
    rate = net.model.keras_model.optimizer.learning_rate
    rates = {"constant": float(np.asarray(rate))}
    net.config = replace(config, one_cycle=True)  # a short session on one cycle
    losses += [info["loss"] for info in net.train_steps(data, CYCLE_STEPS, rng)]
    rates["end"] = float(np.asarray(rate))
    net.config = config
    updates = net.tune(data).as_dict()
    assert net.config is config  # tuning changes the thresholds only
    np.save(out / "pred.npy", net.predict_scaled(image))

    odd = outcome(lambda: np.save(out / "odd.npy", net.predict_scaled(image[:77, :101])))
    channels = outcome(lambda: net.predict_scaled(np.zeros((32, 32, 2), np.float32)).shape)

    def round_trip() -> None:
        saved = out / "saved"
        saved.mkdir()
        net.save(saved)
        config = json.loads(json.dumps(net.config.as_dict()))  # as read back from config.json
        thresholds = StarDistThresholds.from_stored(net.thresholds.as_dict())
        again = StarDistNetwork(StarDistConfig.from_stored(config), 1, None, thresholds)
        again.load(saved)
        np.save(out / "again.npy", again.predict_scaled(image))
        np.save(out / "net.npy", net.predict_scaled(image))

    def damaged() -> dict[str, Any]:
        folder = out / "damaged"
        folder.mkdir()
        config = net.config
        missing = outcome(StarDistNetwork(config, 1, None).load, folder)
        net.save(folder)
        path = folder / WEIGHTS_FILE
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        truncated = outcome(StarDistNetwork(config, 1, None).load, folder)
        path.write_bytes(b"not a weights file" * 100)
        garbage = outcome(StarDistNetwork(config, 1, None).load, folder)
        path.write_bytes(data)
        other = replace(config, n_rays=2 * config.n_rays)  # a differently shaped network
        reshaped = outcome(StarDistNetwork(other, 1, None).load, folder)
        return {"missing": missing, "truncated": truncated, "garbage": garbage, "other": reshaped}

    return {
        "losses": losses,
        "rates": rates,
        "loss_weights": [float(w) for w in net.model.config.train_loss_weights],
        "updates": updates,
        "config": {**net.config.as_dict(), **net.thresholds.as_dict()},
        "device": net.device,
        "odd": odd,
        "channels": channels,
        "round_trip": outcome(round_trip),
        "damaged": outcome(damaged),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small StarDist trained on 5 annotated cells of a synthetic image, then tuned (in a
    child process): its image, truth and annotation, and what the child returned and wrote."""
    folder = tmp_path_factory.mktemp("stardist-trained")
    raw, truth = make_nuclei((256, 256), 24, radius=(7.0, 11.0), seed=3)
    image = normalise(raw)
    internal = to_internal(sparse_annotation(truth, 5, seed=0))
    np.save(folder / "image.npy", image)
    np.save(folder / "internal.npy", internal)
    result = run_in_subprocess(_child_train_and_check, str(folder))
    return {"folder": folder, "image": image, "truth": truth, "internal": internal, **result}


def test_training_reduces_loss_and_segments(trained: dict[str, Any]) -> None:
    from stardist.matching import matching

    losses = trained["losses"]
    assert len(losses) == TRAIN_STEPS + CYCLE_STEPS and np.all(np.isfinite(losses))
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:5])
    updates = trained["updates"]
    assert set(updates) >= {"prob_thresh", "nms_thresh"}
    assert 0 < updates["prob_thresh"] < 1 and updates["nms_thresh"] in (0.3, 0.4, 0.5)
    assert trained["config"]["prob_thresh"] == updates["prob_thresh"]
    assert trained["device"] == "cpu"

    pred = np.load(trained["folder"] / "pred.npy")
    assert pred.dtype == np.int32 and pred.shape == trained["truth"].shape
    assert annotated_f1([pred], [trained["internal"]]) >= 0.8
    assert matching(trained["truth"], pred, thresh=0.5).f1 >= 0.7  # on every object


def test_the_rate_follows_one_cycle_and_the_distance_weight_reaches_keras(trained) -> None:
    from napari_cellsparse.models.schedule import one_cycle_rate
    from napari_cellsparse.training.stardist_backend import WARMUP

    lr = SMALL["learning_rate"]
    end = one_cycle_rate(CYCLE_STEPS - 1, CYCLE_STEPS, lr, WARMUP)
    assert end < lr / 100  # annealed
    assert trained["rates"]["end"] == pytest.approx(end, rel=1e-4)
    assert trained["rates"]["constant"] == pytest.approx(lr, rel=1e-6)
    assert trained["loss_weights"] == [1.0, StarDistConfig().dist_loss_weight]


def test_predict_any_size_and_checks_channels(trained: dict[str, Any]) -> None:
    value_of(trained["odd"])
    labels = np.load(trained["folder"] / "odd.npy")
    assert labels.shape == (77, 101) and labels.dtype == np.int32
    assert_raised(trained["channels"], BadInputError, match="channel")


def test_save_load_round_trip(trained: dict[str, Any]) -> None:
    value_of(trained["round_trip"])
    folder = trained["folder"]
    assert sorted(p.name for p in (folder / "saved").iterdir()) == [WEIGHTS_FILE]
    np.testing.assert_array_equal(np.load(folder / "again.npy"), np.load(folder / "net.npy"))


def test_missing_or_damaged_weights(trained: dict[str, Any]) -> None:
    damaged = value_of(trained["damaged"])
    for case in ("missing", "truncated", "garbage", "other"):
        assert_raised(damaged[case], WeightsError, match=WEIGHTS_FILE)


# -- bioimage.io export and import (one child process) ------------------------------------

EXPORT_STEPS = 200
SPARSE_DOI = "10.1101/2023.06.13.544786"
STARDIST_DOI = "10.1007/978-3-030-00934-2_30"


def _refuse_remote_connections() -> None:
    """In the child: every connection that leaves this machine fails (an offline test)."""
    import socket

    connect = socket.socket.connect

    def local_only(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise OSError(f"test is offline: connection to {address} refused")
        return connect(self, address)

    socket.socket.connect = local_only  # type: ignore[method-assign]


def _child_export_and_reload(folder: str) -> dict[str, Any]:
    """Train a small StarDist, export it, run bioimage.io's checks on the package (offline),
    delete the model folder and load the package back; arrays go to ``folder``."""
    import shutil
    import zipfile

    from bioimageio.core import test_model
    from bioimageio.spec import load_description, load_model_description

    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
    from napari_cellsparse.training import load_model, train
    from napari_cellsparse.training.bioimage_io import export_model

    import_tf()
    _refuse_remote_connections()
    out = Path(folder)
    os.chdir(out)  # bioimageio.core unzips SavedModel weights below the working directory
    image, truth = make_nuclei((128, 128), n_objects=14, radius=(7.0, 9.0), seed=1)
    annotation = sparse_from_truth(image, truth, k=5, band=8)
    # A constant rate and the last step's weights: the export needs a model that finds the
    # cells in few steps; the small network's one cycle at 5e-3 did not always get there in
    # 200, nor (on some machines) the mean of its last half's weights.
    settings = {**SMALL, "batch_size": 4, "one_cycle": False, "average_tail": 0.0}
    model = train(
        "stardist", image, annotation, name="tiny-stardist", steps=EXPORT_STEPS, **settings
    )
    package = export_model(model.name, out / "stardist.zip", image=image)

    validation = load_description(package)
    summary = test_model(package, devices=["cpu"])
    descr = load_model_description(package, perform_io_checks=False)
    with zipfile.ZipFile(package) as z:
        names = sorted(z.namelist())
        np.save(out / "test_input.npy", np.load(z.open("test_input.npy")))
        np.save(out / "test_output.npy", np.load(z.open("test_output.npy")))
        texts = {n: z.read(n).decode() for n in names if n.endswith((".yaml", ".md"))}

    other, _ = make_nuclei((112, 144), n_objects=10, radius=(9.0, 11.0), seed=5)
    scaled = normalise(make_nuclei((96, 96), 6, radius=(7.0, 9.0), seed=2)[0])
    expected = [model.predict(image), model.predict(other), *model.network.probabilities(scaled)]
    assert model.folder is not None
    shutil.rmtree(model.folder)  # the package alone, not our model folder
    loaded = load_model(package, device="cpu")
    again = [loaded.predict(image), loaded.predict(other), *loaded.network.probabilities(scaled)]
    save_arrays(out / "expected.npz", expected)
    save_arrays(out / "again.npz", again)
    ours = descr.config.model_extra["napari_cellsparse"]
    return {
        "validation": validation.validation_summary.status,
        "status": summary.status,
        "details": [[d.name, d.status] for d in summary.details],
        "names": names,
        "texts": texts,
        "input_axes": [str(a.id) for a in descr.inputs[0].axes],
        "output_axes": [str(a.id) for a in descr.outputs[0].axes],
        "halo": [getattr(a, "halo", None) for a in descr.outputs[0].axes],
        "input_min_step": [
            [a.size.min, a.size.step] for a in descr.inputs[0].axes if str(a.id) in "yx"
        ],
        "preprocessing": [
            [
                p.id,
                p.kwargs.min_percentile,
                p.kwargs.max_percentile,
                [str(a) for a in p.kwargs.axes],
            ]
            for p in descr.inputs[0].preprocessing
            if p.id == "scale_range"
        ],
        "weights": sorted(k for k, v in descr.weights if v is not None),
        "dois": [str(c.doi) for c in descr.cite],
        "ours": ours,
        "thresholds": model.thresholds.as_dict(),
        "loaded_thresholds": loaded.thresholds.as_dict(),
        "grid": list(model.config.grid),
        "n_rays": model.config.n_rays,
        "diameter": model.config.target_diameter,
        "package_info": loaded.info.get("package"),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What :func:`_child_export_and_reload` returned and wrote (a model store of its own)."""
    pytest.importorskip("bioimageio.core")
    from napari_cellsparse.core.paths import HOME_ENV

    folder = tmp_path_factory.mktemp("stardist-export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(folder / "home"))
        result = run_in_subprocess(_child_export_and_reload, str(folder))
    return {"folder": folder, **result}


def test_export_passes_bioimageio_core_model_test_offline(exported: dict[str, Any]) -> None:
    assert exported["validation"] == "valid-format"
    details = dict(map(tuple, exported["details"]))
    failed = [name for name, status in details.items() if status == "failed"]
    assert exported["status"] == "passed", failed
    for weights in ("keras_v3", "tensorflow_saved_model_bundle"):
        assert details[f"Reproduce test outputs from test inputs ({weights})"] == "passed"
        assert (
            details[
                f"Run {weights} inference for inputs with batch_size: 2 and size parameter n: 2"
            ]
            == "passed"
        )


def test_export_holds_the_raw_stardist_output_as_published_packages(exported) -> None:
    assert exported["weights"] == ["keras_v3", "tensorflow_saved_model_bundle"]
    assert {"rdf.yaml", "README.md", "cover.png", "stardist.keras", "tf_saved_model.zip"} <= set(
        exported["names"]
    )
    assert exported["input_axes"] == ["batch", "y", "x", "channel"]
    assert exported["output_axes"] == ["batch", "y", "x", "channel"]
    # A consumer that tiles crops the measured reach of a pixel from each tile.
    _, halo_y, halo_x, _ = exported["halo"]
    (min_y, step), min_step_x = exported["input_min_step"]
    assert halo_y == halo_x and halo_y >= step and halo_y % step == 0
    assert min_y == 2 * halo_y + step and min_step_x == [min_y, step]
    assert exported["preprocessing"] == [["scale_range", 1.0, 99.8, ["y", "x"]]]
    folder = exported["folder"]
    test_in, test_out = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    n_rays, (gy, gx) = exported["n_rays"], exported["grid"]
    assert test_in.max() > 10 and test_in.shape[0] == 1 and test_in.shape[-1] == 1
    assert test_out.shape == (1, *test_in.shape[1:3], 1 + n_rays)
    # Probability in [0, 1] at the grid points and zero between them; distances repeated.
    prob, dist = test_out[0, ..., 0], test_out[0, ..., 1:]
    assert prob.min() >= 0 and prob.max() <= 1 and prob[::gy, ::gx].max() > 0.5
    assert np.all(prob[1::gy] == 0) and np.all(prob[:, 1::gx] == 0)
    np.testing.assert_array_equal(dist[1::gy], dist[::gy])  # the height is a multiple of gy
    d = round(exported["diameter"])
    assert f"cells must be about {d} pixels across" in exported["texts"]["README.md"]
    for text in exported["texts"].values():
        assert "http://" not in text and "https://" not in text
    assert {SPARSE_DOI, STARDIST_DOI} <= set(exported["dois"])
    ours = exported["ours"]
    assert ours["backend"] == "stardist" and ours["training"]["steps"] == EXPORT_STEPS
    assert ours["config"]["prob_thresh"] == exported["thresholds"]["prob_thresh"]


def test_export_reimported_from_the_package_predicts_identically(exported) -> None:
    folder = exported["folder"]
    expected, again = load_arrays(folder / "expected.npz"), load_arrays(folder / "again.npz")
    assert expected[0].max() >= 5  # the model finds cells: the comparison means something
    for a, b in zip(expected, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert exported["loaded_thresholds"] == exported["thresholds"]
    assert exported["package_info"] == str(folder / "stardist.zip")
