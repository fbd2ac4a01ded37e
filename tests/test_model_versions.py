"""A model is never lost: versioned model folders, failed, diverged and killed saves.

Every save writes a complete new version beside the old one and switches ``current.json`` to
it; these tests break a save in each way a real one can break (disk full, NaN, a killed
process) and check that the previous version still loads and predicts exactly as before.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import napari_cellsparse
from napari_cellsparse.core.errors import TrainingDivergedError, WeightsError
from napari_cellsparse.models.store import (
    CONFIG_FILE,
    METADATA_FILE,
    POINTER_FILE,
    VERSIONS_DIR,
    current_folder,
)
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import list_models, load_model, models_dir, train
from napari_cellsparse.training.stored import THRESHOLDS_FILE

TINY = {"base_filters": 8, "depth": 2, "patch_size": 64, "batch_size": 2}


def blobs() -> tuple[np.ndarray, np.ndarray]:
    """A generated image of separated nuclei and its sparse annotation (6 cells)."""
    image, truth = make_nuclei((128, 128), n_objects=16, radius=(7.0, 9.0), seed=1)
    return image, sparse_from_truth(image, truth, k=3, band=10)


def versions(name: str) -> list[str]:
    return sorted(p.name for p in (models_dir() / name / VERSIONS_DIR).iterdir())


@pytest.fixture
def first() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Model ``m`` trained once (3 steps): image, annotation, its prediction, its listing."""
    image, ann = blobs()
    model = train("unet", image, ann, name="m", steps=3, **TINY)
    return image, ann, model.predict(image), list_models()


def assert_unchanged(first: tuple) -> None:
    """Model ``m`` still loads, predicts as it did, and is listed as it was."""
    image, _, before, listed = first
    np.testing.assert_array_equal(load_model("m").predict(image), before)
    assert list_models() == listed


def test_save_layout_and_two_versions_kept(first) -> None:
    image, ann, _, _ = first
    assert versions("m") == ["0001"]
    assert current_folder(models_dir() / "m") == models_dir() / "m" / VERSIONS_DIR / "0001"
    train("unet", image, ann, name="m", steps=1)
    train("unet", image, ann, name="m", steps=1)
    folder = models_dir() / "m"
    assert versions("m") == ["0002", "0003"]
    assert json.loads((folder / POINTER_FILE).read_text())["version"] == "0003"
    assert sorted(p.name for p in folder.iterdir()) == [POINTER_FILE, VERSIONS_DIR]
    [meta] = list_models()
    assert meta["name"] == "m" and meta["steps"] == 5 and len(meta["sessions"]) == 3
    assert meta["path"] == str(folder)
    assert load_model("m").info["steps"] == 5
    assert json.loads((folder / VERSIONS_DIR / "0002" / METADATA_FILE).read_text())["steps"] == 4


def test_disk_full_during_a_save_keeps_the_previous_version(first, monkeypatch) -> None:
    import napari_cellsparse.models.torch_io as torch_io

    def disk_full(net, folder: Path, filename: str) -> None:
        (Path(folder) / filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch_io, "save_state", disk_full)
    image, ann, _, _ = first
    with pytest.raises(WeightsError, match="No space left on device") as caught:
        train("unet", image, ann, name="m", steps=2)
    assert "previous version is kept" in str(caught.value)
    assert "disk space" in str(caught.value)
    assert versions("m") == ["0001"]
    assert_unchanged(first)


def test_first_save_failing_leaves_nothing(monkeypatch) -> None:
    import napari_cellsparse.models.torch_io as torch_io

    def denied(net, folder: Path, filename: str) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(torch_io, "save_state", denied)
    image, ann = blobs()
    with pytest.raises(WeightsError, match="Nothing was saved"):
        train("unet", image, ann, name="fresh", steps=1, **TINY)
    assert not (models_dir() / "fresh").exists() and list_models() == []


def _nan_at(step: int):
    """A U-Net ``train_steps`` that reports a NaN loss at ``step``."""
    from napari_cellsparse.training.unet import UNetNetwork

    real = UNetNetwork.train_steps

    def train_steps(self, data, steps, rng):
        for k, info in enumerate(real(self, data, steps, rng), start=1):
            yield {**info, "loss": float("nan")} if k == step else info

    return train_steps


def test_nan_loss_stops_training_and_keeps_the_previous_version(first, monkeypatch) -> None:
    from napari_cellsparse.training.unet import UNetNetwork

    monkeypatch.setattr(UNetNetwork, "train_steps", _nan_at(3))
    image, ann, _, _ = first
    seen: list[int] = []
    with pytest.raises(TrainingDivergedError) as caught:
        train("unet", image, ann, name="m", steps=6, progress=lambda s, n, i: seen.append(s))
    message = str(caught.value)
    assert "step 3" in message and "previous version" in message
    assert "learning rate, now 0.002" in message
    assert seen == [1, 2]
    assert versions("m") == ["0001"]
    assert_unchanged(first)


def test_huge_learning_rate_diverges_and_names_it(first) -> None:
    image, ann, _, _ = first
    with pytest.raises(TrainingDivergedError, match=r"step \d+") as caught:
        train("unet", image, ann, name="m", steps=8, learning_rate=1e30)
    assert "now 1e+30" in str(caught.value)
    assert_unchanged(first)


def test_non_finite_weights_are_never_saved(first, monkeypatch) -> None:
    import torch

    from napari_cellsparse.training.unet import UNetNetwork

    real = UNetNetwork.train_steps

    def poisoned(self, data, steps, rng):
        for k, info in enumerate(real(self, data, steps, rng), start=1):
            if k == steps:  # the loss of the last step is finite, its update is not
                with torch.no_grad():
                    self.net.head.weight[0].fill_(float("inf"))
            yield info

    monkeypatch.setattr(UNetNetwork, "train_steps", poisoned)
    image, ann, _, _ = first
    with pytest.raises(TrainingDivergedError, match="weights are no longer finite"):
        train("unet", image, ann, name="m", steps=2)
    assert_unchanged(first)


def test_diverged_first_training_saves_nothing(monkeypatch) -> None:
    from napari_cellsparse.training.unet import UNetNetwork

    monkeypatch.setattr(UNetNetwork, "train_steps", _nan_at(1))
    image, ann = blobs()
    with pytest.raises(TrainingDivergedError, match="Nothing was saved"):
        train("unet", image, ann, name="fresh", steps=3, **TINY)
    assert list_models() == [] and not (models_dir() / "fresh").exists()


KILLED_SAVE = """
import os, signal
import napari_cellsparse.models.torch_io as torch_io
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.training import train
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth

real = torch_io.save_state

def save_then_die(net, folder, filename):
    real(net, folder, filename)
    os.kill(os.getpid(), signal.SIGKILL)

torch_io.save_state = save_then_die
image, truth = make_nuclei((128, 128), n_objects=16, radius=(7.0, 9.0), seed=1)
train("unet", image, sparse_from_truth(image, truth, k=3, band=10), name="m", steps=2)
"""


def test_process_killed_inside_the_save_keeps_the_previous_version(first) -> None:
    source = str(Path(napari_cellsparse.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SAVE)], env=env, timeout=300, check=False
    )
    assert done.returncode == -signal.SIGKILL
    partial = models_dir() / "m" / VERSIONS_DIR / "0002.partial"
    assert (partial / "unet.pt").is_file()  # the weights were written, the switch never came
    assert versions("m") == ["0001", "0002.partial"]
    assert_unchanged(first)
    image, ann, _, _ = first
    again = train("unet", image, ann, name="m", steps=1)
    assert versions("m") == ["0001", "0003"] and again.info["steps"] == 4


def test_one_folder_models_load_list_and_continue(first) -> None:
    image, ann, before, _ = first
    new = models_dir() / "m"
    old = models_dir() / "old"
    old.mkdir()
    for name in ("unet.pt", CONFIG_FILE, THRESHOLDS_FILE):
        shutil.copy(current_folder(new) / name, old / name)
    meta = json.loads((current_folder(new) / METADATA_FILE).read_text())
    (old / METADATA_FILE).write_text(json.dumps({**meta, "name": "old"}))

    assert current_folder(old) == old
    np.testing.assert_array_equal(load_model("old").predict(image), before)
    listed = {m["name"]: m for m in list_models()}
    assert listed["old"]["steps"] == 3 and listed["old"]["path"] == str(old)

    train("unet", image, ann, name="old", steps=1)
    assert versions("old") == ["0001"] and (old / "unet.pt").is_file()  # the previous version
    assert load_model("old").info["steps"] == 4
    train("unet", image, ann, name="old", steps=1)
    assert versions("old") == ["0001", "0002"]
    assert sorted(p.name for p in old.iterdir()) == [POINTER_FILE, VERSIONS_DIR]
    assert {m["name"]: m for m in list_models()}["old"]["steps"] == 5


def test_batch_model_cache_follows_the_current_version(first) -> None:
    from napari_cellsparse.scale.batch import worker_model

    image, ann, _, _ = first
    folder = models_dir() / "m"
    model = worker_model(folder)
    assert worker_model(folder) is model
    train("unet", image, ann, name="m", steps=1)
    assert worker_model(folder) is not model
    assert worker_model(folder).info["steps"] == 4


def test_cpu_networks_run_channels_last_and_save_plain_tensors(first) -> None:
    """On the CPU the network runs channels-last (faster convolutions); its file holds plain
    contiguous tensors that a default-layout network of the architecture loads as they are."""
    import torch

    from napari_cellsparse.training.unet_architecture import UNet

    image, _, before, _ = first
    model = load_model("m")
    convs = [p for p in model.network.net.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # truly channels-last, not 1x1 kernels
    state = torch.load(current_folder(models_dir() / "m") / "unet.pt", weights_only=True)
    assert all(t.is_contiguous() for t in state.values())
    config = model.network.config
    plain = UNet(1, config.base_filters, config.depth, config.grid)
    plain.load_state_dict(state)
    scaled = np.zeros((1, 1, 64, 64), np.float32)
    scaled[..., 20:40, 20:40] = 1.0
    with torch.inference_mode():
        expected = plain.eval()(torch.from_numpy(scaled))
        got = model.network.net.eval()(torch.from_numpy(scaled))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(model.predict(image), before)
