"""QuPath projects of a batch: the project file field by field against one QuPath wrote, every
image listed with a file URI that resolves, every object in its GeoJSON, bad folders refused.

No QuPath runs here: opening the project and running the Groovy script in QuPath is not
checked by these tests.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import tifffile

from napari_cellsparse.cli import main
from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.formats.image_sources import open_image
from napari_cellsparse.formats.qupath_project import (
    GEOJSON_KEY,
    ProjectImage,
    batch_project_images,
    java_file_uri,
    write_qupath_project,
)
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.scale.batch import NO_DASK, BatchOptions, run_batch
from napari_cellsparse.scale.workspace import deepcell_items

# The structure of a project.qpproj written by QuPath v0.6.0-rc3, abridged to its first entry
# (https://github.com/sbalci/metadata-qupath/blob/15d2afe19b159372e42d6b784b86d7bb4567a21f/
# project.qpproj). QuPath's own repository holds no project file; the same fields are those
# of its writer, qupath/qupath v0.6.0 qupath-core/src/main/java/qupath/lib/projects/
# DefaultProject.java (writeProject, DefaultProjectImageEntry, which adds "tags" in v0.6.0)
# and qupath/lib/images/servers/ImageServerBuilder.java (DefaultImageServerBuilder).
REFERENCE = {
    "version": "0.6.0-rc3",
    "createTimestamp": 1748867913691,
    "modifyTimestamp": 1748867913691,
    "uri": "file:/D:/DigitalPathologyDrafts/metadata-qupath/project.qpproj",
    "lastID": 107,
    "images": [
        {
            "serverBuilder": {
                "builderType": "uri",
                "providerClassName": "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder",
                "uri": "file:/E:/KONTROLHE_2025/%C5%9EUBAT19.02.25_HE_0/kontrol19.svs",
                "args": ["--series", "0"],
                "metadata": {"name": "kontrol19.svs", "width": 64612, "height": 76205},
            },
            "entryID": 2,
            "randomizedName": "b2437745-f5b4-4205-8d7d-634e189a4ae4",
            "imageName": "kontrol19.svs",
            "metadata": {},
        }
    ],
}
OPTIONAL_IN_BUILDER = {"metadata"}  # left out: QuPath reads it from the image
ADDED_IN_V060 = {"tags"}


@pytest.fixture
def store(nuclei_model_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HOME_ENV, str(nuclei_model_home))
    return nuclei_model_home / "models" / "nuclei"


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        image, _ = make_nuclei((160, 150), n_objects=12, radius=(7.0, 9.0), seed=30 + k)
        tifffile.imwrite(folder / name, image)


def path_of(uri: str) -> Path:
    assert re.match(r"^file:/[^/]", uri), uri  # Java's File.toURI(): one slash
    return Path(unquote(uri[len("file:") :]))


def check_project(project_dir: Path, images: list[Path], masks: list[Path]) -> dict:
    project = json.loads((project_dir / "project.qpproj").read_text())
    # field by field against the project QuPath wrote
    assert project.keys() == REFERENCE.keys()
    for key, value in REFERENCE.items():
        assert type(project[key]) is type(value), key
    assert project["version"] == "0.6.0"
    assert path_of(project["uri"]) == (project_dir / "project.qpproj").absolute()
    reference_entry = REFERENCE["images"][0]
    reference_builder = reference_entry["serverBuilder"]
    entries = project["images"]
    for entry in entries:
        assert entry.keys() == reference_entry.keys() | ADDED_IN_V060
        builder = entry["serverBuilder"]
        assert builder.keys() == reference_builder.keys() - OPTIONAL_IN_BUILDER
        for key in ("builderType", "providerClassName", "args"):
            assert builder[key] == reference_builder[key]
        uuid.UUID(entry["randomizedName"])
        assert entry["tags"] == [] and all(isinstance(v, str) for v in entry["metadata"].values())
    # every image of the batch, with a URI that resolves to it
    assert [path_of(e["serverBuilder"]["uri"]) for e in entries] == [p.absolute() for p in images]
    assert [e["imageName"] for e in entries] == [p.name for p in images]
    assert [e["entryID"] for e in entries] == list(range(1, len(images) + 1))
    assert project["lastID"] == len(images)
    # every object of each mask in the entry's GeoJSON, with its measurements
    for entry, mask in zip(entries, masks, strict=True):
        with open_image(mask) as source:
            ids = np.unique(source.read_all())
        ids = ids[ids > 0].tolist()
        features = json.loads((project_dir / entry["metadata"][GEOJSON_KEY]).read_text())
        assert sorted(f["properties"]["label_id"] for f in features["features"]) == ids
        assert int(entry["metadata"]["cellsparse.objects"]) == len(ids) > 5
        assert all(f["properties"]["objectType"] == "detection" for f in features["features"])
    script = (project_dir / "scripts" / "import_cellsparse_objects.groovy").read_text()
    assert f"getMetadataValue('{GEOJSON_KEY}')" in script and "PathIO.readObjects" in script
    return project


def test_cli_batch_writes_a_qupath_project_of_the_folder(tmp_path: Path, store, capsys) -> None:
    names = ["a.tif", "b c é.tif"]  # a space and a non-ASCII letter in a URI
    write_images(tmp_path / "in", names)
    project_dir = tmp_path / "qupath"
    code = main(
        [
            "batch",
            "--model", "nuclei",
            "--input", str(tmp_path / "in"),
            "--out", str(tmp_path / "out"),
            "--scheduler", "none",
            "--mask-format", "ome-zarr",
            "--block", "96",
            "--qupath-project", str(project_dir),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert "QuPath project with 2 image(s)" in capsys.readouterr().out
    masks = [tmp_path / "out" / f"{Path(n).stem}_labels.ome.zarr" for n in names]
    project = check_project(project_dir, [tmp_path / "in" / n for n in names], masks)
    assert "%20" in project["images"][1]["serverBuilder"]["uri"]
    assert "%C3%A9" in project["images"][1]["serverBuilder"]["uri"]
    table_columns = json.loads((project_dir / "objects" / "a.geojson").read_text())
    measured = table_columns["features"][0]["properties"]["measurements"]
    assert "Area px^2" in measured and len(measured) > 5  # the batch table's measurements
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "qupath"]
    # a second run replaces the project it wrote
    assert main(["batch", "--model", "nuclei", "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--scheduler", "none", "--mask-format", "ome-zarr",
                 "--qupath-project", str(project_dir)]) == 0  # fmt: skip
    check_project(project_dir, [tmp_path / "in" / n for n in names], masks)


def test_a_deepcell_workspace_gets_a_project_of_its_images(tmp_path: Path, store) -> None:
    names = ["s1.ome.tif", "s2.ome.tif"]
    write_images(tmp_path / "ws" / "OMETIFF", names)
    items = deepcell_items(tmp_path / "ws", "nucleus", geojson=True)
    summary = run_sync(run_batch(items, "nuclei", BatchOptions(block=96), scheduler=NO_DASK))
    images, left_out = batch_project_images(items, summary)
    assert left_out == []
    write_qupath_project(tmp_path / "project", images)
    check_project(
        tmp_path / "project",
        [tmp_path / "ws" / "OMETIFF" / n for n in names],
        [item.labels for item in items],
    )


def test_bad_project_folders_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    image = tmp_path / "x.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    geojson = tmp_path / "x.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    images = [ProjectImage(image, geojson)]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not empty"):
        write_qupath_project(foreign, images)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(BadInputError, match="is a file"):
        write_qupath_project(geojson, images)
    with pytest.raises(BadInputError, match="Cannot write"):
        write_qupath_project(geojson / "sub" / "project", images)
    # a project QuPath has since used (its data/ folder) is never overwritten
    reviewed = tmp_path / "reviewed"
    write_qupath_project(reviewed, images)
    (reviewed / "data").mkdir()
    with pytest.raises(BadInputError, match="not empty"):
        write_qupath_project(reviewed, images)
    with pytest.raises(BadInputError, match="No images"):
        write_qupath_project(tmp_path / "empty", [])
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == ["foreign", "reviewed", "x.geojson", "x.tif"]


def test_cli_refuses_a_bad_project_folder_before_any_work(tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "in", ["a.tif"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "other.qpproj").write_text("{}")
    code = main(["batch", "--model", "nuclei", "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--qupath-project", str(tmp_path / "taken")])  # fmt: skip
    assert code == 2
    assert "not a project written by napari-cellsparse" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_file_uris_are_spelled_as_java_does() -> None:
    assert java_file_uri("/data/ŞUBAT 1/a.tif") == "file:/data/%C5%9EUBAT%201/a.tif"
    assert java_file_uri("/d/a(1)+b.tif") == "file:/d/a(1)+b.tif"
