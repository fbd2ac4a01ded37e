"""Frozen training configurations, thresholds kept apart, and model folders of the old layout.

A backend's configuration is made once from settings (checked against the bounds of
``core.limits``) and never changes; ``tune()`` finds thresholds that are stored beside
``config.json`` in ``thresholds.json``. Folders written before that (thresholds inside
``config.json``) must load and predict exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.limits import SETTING_BOUNDS
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.models.store import CONFIG_FILE, current_folder, model_folder
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import load_model, train
from napari_cellsparse.training.config import (
    CellposeConfig,
    CellposeThresholds,
    StarDistConfig,
    StarDistThresholds,
    UNetConfig,
    UNetThresholds,
)
from napari_cellsparse.training.sampling import SparseDataset
from napari_cellsparse.training.stored import THRESHOLDS_FILE

CONFIGS = (UNetConfig, CellposeConfig, StarDistConfig)
THRESHOLDS = (UNetThresholds, CellposeThresholds, StarDistThresholds)
TINY = {"base_filters": 8, "patch_size": 64, "batch_size": 4, "seed": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A tiny U-Net trained (40 steps) in its own store; the store's home and the image."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(HOME_ENV, str(home))
        image, truth = make_nuclei((128, 128), n_objects=16, radius=(7.0, 9.0), seed=2)
        labels = sparse_from_truth(image, truth, k=4, band=10)
        train("unet", image, labels, name="tiny", steps=40, **TINY)
    return home, image


@pytest.fixture
def home(tiny: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HOME_ENV, str(tiny[0]))
    return tiny[0]


@pytest.mark.parametrize("kind", CONFIGS + THRESHOLDS)
def test_a_configuration_cannot_be_changed(kind: type) -> None:
    made = kind()
    name = dataclasses.fields(made)[-1].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, name, 1)
    changed = dataclasses.replace(made, **{name: 1})
    assert getattr(changed, name) == 1 and made == kind()


def test_a_trained_model_hands_out_no_dict_that_changes_it(home: Path, tiny) -> None:
    model = load_model("tiny")
    assert isinstance(model.config, UNetConfig) and isinstance(model.thresholds, UNetThresholds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.depth = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.thresholds.centre_threshold = 0.9  # type: ignore[misc]
    assert model.config == UNetConfig.from_settings(**TINY)


@pytest.mark.parametrize("kind", CONFIGS + THRESHOLDS)
def test_every_number_of_a_configuration_has_a_bound(kind: type) -> None:
    numbers = [f.name for f in dataclasses.fields(kind) if f.default is not None]
    assert numbers and all(name in SETTING_BOUNDS for name in numbers)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"bogus": 1}, "bogus"),
        ({"patch_size": 3}, "patch_size"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"depth": True}, "depth"),
        ({"max_size_factor": "big"}, "max_size_factor"),
        ({"centre_threshold": 1.5}, "centre_threshold"),
        ({"tuned_annotated_f1": 1.0}, "tuned_annotated_f1"),  # found by tune(), not chosen
    ],
)
def test_an_unknown_or_out_of_range_setting_is_named(settings: dict, named: str) -> None:
    image, truth = make_nuclei((64, 64), n_objects=4, radius=(7.0, 9.0), seed=1)
    labels = sparse_from_truth(image, truth, k=2, band=6)
    with pytest.raises(BadInputError, match=named):
        train("unet", image, labels, name="refused", steps=1, **settings)
    assert not model_folder("refused").exists()  # nothing written on refusal


@pytest.mark.parametrize("kind", CONFIGS)
def test_from_settings_names_the_setting(kind: type) -> None:
    with pytest.raises(BadInputError, match="no_such_setting"):
        kind.from_settings(no_such_setting=1)
    with pytest.raises(BadInputError, match="batch_size"):
        kind.from_settings(batch_size=0)
    assert kind.from_settings(patch_size=64.0).patch_size == 64  # a whole float is an int


def test_a_yes_no_setting_takes_true_or_false_only() -> None:
    from napari_cellsparse.training.config import StarDistConfig

    assert StarDistConfig().one_cycle is False
    assert StarDistConfig.from_settings(one_cycle=True).as_dict()["one_cycle"] is True
    for value in (0, 1, "yes", None):
        with pytest.raises(BadInputError, match="one_cycle must be true or false"):
            StarDistConfig.from_settings(one_cycle=value)


def test_tune_keeps_the_configuration_and_stores_thresholds_apart(home: Path, tiny) -> None:
    model = load_model("tiny")
    files = current_folder(model_folder("tiny"))
    config = json.loads((files / CONFIG_FILE).read_text())
    thresholds = json.loads((files / THRESHOLDS_FILE).read_text())
    assert not set(config) & set(UNetThresholds.names())  # no threshold in config.json
    assert thresholds == model.thresholds.as_dict()
    assert thresholds["tuned_annotated_f1"] is not None  # tune() ran and was stored
    configured = model.config
    again = model.network.tune(_dataset(tiny[1], model.config.target_diameter))
    assert model.config is configured and model.thresholds is again


def test_a_model_folder_of_the_old_layout_loads_and_predicts_identically(home: Path, tiny) -> None:
    """config.json as written before thresholds had their own file: every setting, the
    tuned thresholds, their F1, the object scale and the channel count in one mapping."""
    image = tiny[1]
    model = load_model("tiny")
    tuned = dataclasses.replace(model.thresholds, centre_threshold=0.9, foreground_threshold=0.3)
    model.network.thresholds = tuned  # not the defaults, so that reading them is tested
    old = model_folder("old-layout")
    shutil.copytree(model_folder("tiny"), old)
    files = current_folder(old)
    (files / THRESHOLDS_FILE).unlink()
    old_config = {
        **UNetConfig.from_settings(**TINY).as_dict(),
        "centre_threshold": 0.9,
        "foreground_threshold": 0.3,
        "tuned_annotated_f1": tuned.tuned_annotated_f1,
        **model.scale.as_dict(),
        "n_channels": 1,
    }
    (files / CONFIG_FILE).write_text(json.dumps(old_config, indent=2))

    loaded = load_model("old-layout")
    assert loaded.settings() == model.settings()
    expected = model.predict(image)
    np.testing.assert_array_equal(loaded.predict(image), expected)
    default = load_model("tiny")  # the same weights with the tuned (not these) thresholds
    assert not np.array_equal(default.predict(image), expected)

    # Training goes on from it, starting from its thresholds and architecture.
    labels = sparse_from_truth(*make_nuclei((128, 128), 16, (7.0, 9.0), seed=2), k=4, band=10)
    more = train("unet", image, labels, name="old-layout", steps=2)
    assert more.config == loaded.config and more.info["steps"] == 42


def _dataset(image: np.ndarray, target_diameter: float) -> SparseDataset:
    """The annotation of the tiny model's image as a training-scale dataset (for tune)."""
    from napari_cellsparse.training.api import _prepare
    from napari_cellsparse.training.inputs import training_pairs

    truth = make_nuclei((128, 128), n_objects=16, radius=(7.0, 9.0), seed=2)[1]
    labels = sparse_from_truth(image, truth, k=4, band=10)
    return _prepare(training_pairs(image, labels), target_diameter)[0]
