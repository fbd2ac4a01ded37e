"""Hostile and malformed input outside the server (issue 22): the readers, the training
settings, GeoJSON and the CLI refuse it with a BadInputError that names the file or the
setting, never a raw library error or a traceback, and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cellsparse import cli
from napari_cellsparse._napari.geojson_io import read_layers
from napari_cellsparse.cli._common import write_labels
from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.limits import MAX_BATCH_SIZE, MAX_PATCH_SIZE, MIN_PATCH_SIZE
from napari_cellsparse.core.tiling import Region
from napari_cellsparse.counting import train_counter
from napari_cellsparse.counting.batch import read_points_csv
from napari_cellsparse.formats.geojson import features_to_labels, read_features
from napari_cellsparse.formats.image_sources import open_image, read_image_file
from napari_cellsparse.formats.tables import write_objects_csv
from napari_cellsparse.samples.catalog import load_sample, read_boxes
from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
from napari_cellsparse.training import models_dir, train
from napari_cellsparse.training.backend import BACKENDS
from napari_cellsparse.worker import jobs

IMAGE = (np.random.default_rng(0).random((128, 128)) * 60000).astype(np.uint16)


# -- hostile image files ------------------------------------------------------------------------


def _tiled_zlib(path: Path) -> bytes:
    tifffile.imwrite(path, IMAGE, compression="zlib", tile=(32, 32))
    return path.read_bytes()


def _truncated_zlib_tiff(folder: Path) -> Path:
    data = _tiled_zlib(folder / "whole.tif")
    (folder / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    return folder / "cut.tif"


def _truncated_plain_tiff(folder: Path) -> Path:
    tifffile.imwrite(folder / "whole.tif", IMAGE)
    data = (folder / "whole.tif").read_bytes()
    (folder / "cut.tif").write_bytes(data[: len(data) // 2])
    return folder / "cut.tif"


def _corrupted_tiff(folder: Path) -> Path:
    data = bytearray(_tiled_zlib(folder / "whole.tif"))
    for i in range(400, len(data) - 200, 97):
        data[i] ^= 0xFF
    (folder / "bad.tif").write_bytes(bytes(data))
    return folder / "bad.tif"


def _truncated_png(folder: Path) -> Path:
    from skimage.io import imsave

    imsave(folder / "whole.png", (IMAGE >> 8).astype(np.uint8), check_contrast=False)
    data = (folder / "whole.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return folder / "cut.png"


def _corrupted_zarr_chunk(folder: Path) -> Path:
    import zarr

    array = zarr.open(str(folder / "img.zarr"), mode="w", shape=IMAGE.shape, chunks=(32, 32))
    array[:] = IMAGE
    chunk = next(
        p
        for p in sorted((folder / "img.zarr").rglob("*"))
        if p.is_file() and p.parent.name.isdigit()
    )
    chunk.write_bytes(b"garbage")
    return folder / "img.zarr"


def _empty(suffix: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / f"empty{suffix}").write_bytes(b"")
        return folder / f"empty{suffix}"

    return make


def _text_as(suffix: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / f"notes{suffix}").write_text("these are notes, not pixels\n")
        return folder / f"notes{suffix}"

    return make


def _folder_as_tiff(folder: Path) -> Path:
    (folder / "folder.tif").mkdir()
    return folder / "folder.tif"


HOSTILE_FILES = {
    "truncated zlib TIFF": _truncated_zlib_tiff,
    "truncated plain TIFF": _truncated_plain_tiff,
    "corrupted TIFF": _corrupted_tiff,
    "truncated PNG": _truncated_png,
    "empty TIFF": _empty(".tif"),
    "empty PNG": _empty(".png"),
    "text named .tif": _text_as(".tif"),
    "text named .png": _text_as(".png"),
    "folder named .tif": _folder_as_tiff,
}


@pytest.mark.parametrize("make", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_open_image_refuses_a_hostile_file_lazily_and_whole(make, tmp_path: Path) -> None:
    path = make(tmp_path)
    reads: list[Callable[[], object]] = [
        lambda: open_image(path).read(Region(0, 0, 128, 128)),
        lambda: open_image(path).read_all(),
        lambda: open_image(path).ranges(),
    ]
    for read in reads:
        with pytest.raises(BadInputError, match="Could not read the image") as err:
            read()
        assert path.name in str(err.value)


@pytest.mark.parametrize("make", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_read_image_file_refuses_a_hostile_file(make, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(BadInputError) as err:
        read_image_file(path)
    assert str(path) in str(err.value)


def test_a_corrupted_zarr_chunk_is_refused_when_its_region_is_read(tmp_path: Path) -> None:
    path = _corrupted_zarr_chunk(tmp_path)
    source = open_image(path)  # only the metadata: fine
    with pytest.raises(BadInputError, match="Could not read the image") as err:
        source.read_all()
    assert str(path) in str(err.value)


def test_the_same_files_intact_still_read(tmp_path: Path) -> None:
    _tiled_zlib(tmp_path / "whole.tif")
    assert np.array_equal(open_image(tmp_path / "whole.tif").read_all()[..., 0], IMAGE)
    assert np.array_equal(read_image_file(tmp_path / "whole.tif"), IMAGE)


def test_a_folder_given_as_an_image_file_is_named_a_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="is a folder"):
        read_image_file(_folder_as_tiff(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00binary", "Could not read the boxes file"),
        (b"x0,y0,x1,y1\n1,2,nan,4\n", "box 1 has a coordinate that is not a finite number"),
        (b"x0,y0,x1,y1\n1,2,3,4\n1,2,inf,4\n", "box 2"),
    ],
)
def test_read_boxes_refuses_a_hostile_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        read_boxes(path)


def test_read_boxes_of_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.csv", tmp_path):
        with pytest.raises(BadInputError, match="Could not read the boxes file"):
            read_boxes(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00binary", "Could not read the points file"),
        (b"y,x\n3,4\nnan,4\n", "point 2 is not a finite number"),
        (b"y,x\n3,-inf\n", "point 1 is not a finite number"),
    ],
)
def test_read_points_csv_refuses_a_hostile_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "points.csv"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        read_points_csv(path)


# -- training settings --------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"patch_size": 0}, f"patch_size must be an integer from {MIN_PATCH_SIZE} to {MAX_PATCH_SIZE}"),
    ({"patch_size": 10**6}, "patch_size must be an integer"),
    ({"patch_size": 64.5}, "patch_size must be an integer"),
    ({"patch_size": "large"}, "patch_size must be an integer"),
    ({"batch_size": 0}, f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}"),
    ({"batch_size": True}, "batch_size must be an integer"),
    ({"learning_rate": -1}, "learning_rate must be a finite number above 0"),
    ({"learning_rate": 0}, "learning_rate must be a finite number above 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number above 0"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number above 0"),
    ({"target_diameter": 0.0}, "target_diameter must be a number above 0"),
    ({"seed": -1}, "seed must be an integer from 0"),
]


@pytest.fixture(scope="module")
def annotated() -> tuple[np.ndarray, np.ndarray]:
    sample = load_sample("nuclei")
    return sample.image, sparse_from_truth(sample.image, sample.labels, k=4)


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS)
def test_train_refuses_bad_settings_before_any_work(
    annotated, settings: dict, message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        train("unet", *annotated, name="hostile", steps=1, **settings)
    assert not (models_dir() / "hostile").exists()


@pytest.mark.parametrize("steps", [-1, 10**9, 2.5])
def test_train_refuses_a_bad_step_count(annotated, steps: float) -> None:
    with pytest.raises(BadInputError, match="steps must be an integer from 0 to 1000000"):
        train("unet", *annotated, name="hostile", steps=steps)  # type: ignore[arg-type]


def test_train_refuses_a_target_diameter_that_would_blow_the_image_up(annotated) -> None:
    with pytest.raises(BadInputError, match="choose a smaller target_diameter"):
        train("unet", *annotated, name="hostile", steps=1, target_diameter=1000.0)


def test_settings_are_checked_before_the_backend_is_imported(
    annotated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StarDist training with a bad setting never imports StarDist (or TensorFlow): here
    the backend's module does not even exist, and only a good setting reaches it."""
    monkeypatch.setitem(BACKENDS, "stardist", "napari_cellsparse._no_such_backend:Net")
    with pytest.raises(BadInputError, match="batch_size must be"):
        train("stardist", *annotated, name="hostile", steps=1, batch_size=0)
    with pytest.raises(ModuleNotFoundError, match="_no_such_backend"):
        train("stardist", *annotated, name="hostile", steps=1, batch_size=2)
    assert "tensorflow" not in sys.modules


def test_the_worker_training_job_checks_before_loading_the_backend(
    annotated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "stardist", "napari_cellsparse._no_such_backend:Net")
    ctx = jobs.JobContext(threading.Event(), lambda: None, {})
    image, labels = annotated
    job = jobs.train(
        ctx, "stardist", [image], [labels], "hostile", 1, False, "cpu", None, 0,
        {"learning_rate": -1.0},
    )  # fmt: skip
    with pytest.raises(BadInputError, match="learning_rate must be a finite number above 0"):
        next(job)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "batch_size must be"),
        ({"patch_size": 0}, "patch_size must be"),
        ({"learning_rate": -1.0}, "learning_rate must be"),
        ({"diameter": float("nan")}, "diameter must be a number from 0"),
        ({"peak_threshold": 2.0}, "peak_threshold must be a number from 0 to 1"),
    ],
)
def test_train_counter_refuses_bad_settings(settings: dict, message: str) -> None:
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    with pytest.raises(BadInputError, match=message):
        train_counter(image, np.array([[10.0, 10.0]]), name="hostile", steps=1, **settings)
    assert not (models_dir() / "hostile").exists()


def test_predict_refuses_a_bad_min_area() -> None:
    from napari_cellsparse.training.config import ObjectScale
    from napari_cellsparse.training.model import TrainedModel

    scale = ObjectScale(train_diameter=16.0)
    model = TrainedModel(network=None, folder=None, info={}, scale=scale)  # type: ignore[arg-type]
    for min_area in (-1, float("inf"), float("nan")):
        with pytest.raises(BadInputError, match="min_area must be a number from 0"):
            model.predict(IMAGE, min_area=min_area)  # type: ignore[arg-type]


# -- GeoJSON ------------------------------------------------------------------------------------

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


def _feature(ring: list, **properties: object) -> dict:
    geometry = {"type": "Polygon", "coordinates": [ring]}
    return {"type": "Feature", "id": "cell-7", "geometry": geometry, "properties": properties}


HOSTILE_FEATURES = {
    "NaN coordinate": (_feature([[0, 0], [float("nan"), 0], [5, 5], [0, 0]]), "found nan"),
    "1e12 coordinate": (_feature([[0, 0], [1e12, 0], [5, 5], [0, 0]]), "found 1000000000000.0"),
    "label_id 2**40": (_feature(SQUARE, label_id=2**40), "label_id must be an integer from 0"),
    "negative label_id": (_feature(SQUARE, label_id=-3), "label_id must be an integer"),
    "text label_id": (_feature(SQUARE, label_id="A1"), "label_id must be an integer"),
}


@pytest.mark.parametrize(
    ("feature", "message"), HOSTILE_FEATURES.values(), ids=HOSTILE_FEATURES.keys()
)
def test_geojson_refuses_hostile_features(tmp_path: Path, feature: dict, message: str) -> None:
    path = tmp_path / "objects.geojson"
    good = _feature(SQUARE, label_id=3)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [good, feature]}))
    for read in (lambda: read_features(path), lambda: read_layers(str(path))):
        with pytest.raises(BadInputError, match=message) as err:
            read()
        assert str(path) in str(err.value) and "feature 2 (id 'cell-7')" in str(err.value)
    with pytest.raises(BadInputError, match="feature 2"):
        features_to_labels([good, feature])


def test_geojson_refuses_a_label_image_larger_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "wide.geojson"
    wide = _feature([[0, 0], [900_000, 0], [900_000, 900_000], [0, 0]])
    path.write_text(json.dumps(wide))
    with pytest.raises(BadInputError, match="more than 200,000,000 pixels") as err:
        read_layers(str(path))
    assert str(path) in str(err.value)


def test_geojson_whole_number_ids_still_read(tmp_path: Path) -> None:
    features = [_feature(SQUARE, label_id=5.0), _feature([[20, 20], [30, 20], [30, 30], [20, 20]])]
    features[1]["properties"]["label_id"] = 9
    result = features_to_labels(features)
    assert set(np.unique(result.labels)) == {0, 5, 9}


# -- the CLI ------------------------------------------------------------------------------------


def _cli_refuses(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out
    return captured.err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("patch_size=0", "patch_size must be an integer from 16 to 2048; got 0"),
        ("batch_size=0", "batch_size must be an integer from 1 to 256; got 0"),
        ("learning_rate=-1", "learning_rate must be a finite number above 0; got -1"),
        ("learning_rate=NaN", "learning_rate must be a finite number above 0"),
        ("min_size=1e400", "min_size must be an integer"),
        ("steps=3", "steps cannot be among the other settings"),  # --steps says how many
        ("name=other", "name cannot be among the other settings"),
    ],
)
def test_cli_train_refuses_bad_settings(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--backend", "cellpose", "--image", "sample:nuclei", "--labels",
            "sample:nuclei", "--name", "hostile", "--steps", "1", "--set", setting]  # fmt: skip
    _cli_refuses(argv, message, capsys)
    assert not models_dir().exists() or not any(models_dir().iterdir())


def test_cli_refuses_hostile_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cut = _truncated_zlib_tiff(tmp_path)
    _cli_refuses(["measure", "--labels", str(cut), "--out", str(out / "t.csv")], str(cut), capsys)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("x0,y0,x1,y1\n1,2,nan,40\n")
    argv = ["sam", "--image", "sample:nuclei", "--boxes", str(boxes), "--out", str(out)]
    _cli_refuses(argv, "not a finite number", capsys)
    points = tmp_path / "points.csv"
    points.write_text("y,x\n10,inf\n")
    tifffile.imwrite(tmp_path / "image.tif", IMAGE)
    argv = ["count", "--image", str(tmp_path / "image.tif"), "--points", str(points),
            "--steps", "1", "--input", str(tmp_path / "image.tif"), "--out", str(out)]  # fmt: skip
    _cli_refuses(argv, "point 1 is not a finite number", capsys)
    points.write_text("y,x\n10,12\n")
    _cli_refuses([*argv, "--set", "steps=3"], "steps cannot be among the other settings", capsys)
    assert not out.exists()


def test_cli_in_a_subprocess_exits_with_a_message(tmp_path: Path) -> None:
    cut = _truncated_plain_tiff(tmp_path)
    out = tmp_path / "table.csv"
    run = subprocess.run(
        [sys.executable, "-m", "napari_cellsparse.cli", "measure", "--labels", str(cut),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert f"cellsparse: error: Could not read the image {cut}" in run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists()


# -- the CLI's writers --------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_cli_label_outputs_are_written_whole(tmp_path: Path, capsys) -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[20:30, 22:35] = 2, 3
    write_labels(tmp_path, "x", labels, {2: 0.5})
    assert np.array_equal(tifffile.imread(tmp_path / "x_labels.tif"), labels)
    rows = (tmp_path / "x_objects.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("2,") and rows[1].endswith(",0.5000")
    assert _leftovers(tmp_path) == []
    assert "(2 objects)" in capsys.readouterr().out


def test_a_failed_cli_write_leaves_the_previous_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table fails half-way: neither the label TIFF nor the table is replaced, and no
    temporary file stays behind."""
    (tmp_path / "x_labels.tif").write_bytes(b"previous labels")
    (tmp_path / "x_objects.csv").write_text("previous table\n")

    def half_then_full_disk(path: Path, *args: object, **kwargs: object) -> int:
        Path(path).write_text("id,centroid_y\n2,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("napari_cellsparse.formats.tables.write_objects_csv", half_then_full_disk)
    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 2:8] = 2
    with pytest.raises(BadInputError, match="No space left on device"):
        write_labels(tmp_path, "x", labels, {})
    assert (tmp_path / "x_labels.tif").read_bytes() == b"previous labels"
    assert (tmp_path / "x_objects.csv").read_text() == "previous table\n"
    assert _leftovers(tmp_path) == []


def test_write_objects_csv_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "objects.csv"
    path.write_text("previous table\n")

    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("regionprops ran out of memory")

    monkeypatch.setattr("skimage.measure.regionprops", broken)
    with pytest.raises(MemoryError):
        write_objects_csv(path, np.ones((4, 4), np.int32))
    assert path.read_text() == "previous table\n"
    assert _leftovers(tmp_path) == []
