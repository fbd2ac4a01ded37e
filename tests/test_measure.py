"""Per-cell measurements against values worked out by hand on tiny label images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.formats.geojson import labels_to_features, read_features, write_features
from napari_cellsparse.formats.image_sources import pixel_size_from_tiff
from napari_cellsparse.formats.tables import write_table
from napari_cellsparse.scale.measure import measure_objects, measured_features

# A 3x4 rectangle (rows 1-3, columns 2-5) of label 7 on an 8x10 image whose pixel value is
# 10 * row + column, so the object's pixels are 12..15, 22..25 and 32..35.
RECT = (slice(1, 4), slice(2, 6))
RECT_VALUES = [12, 13, 14, 15, 22, 23, 24, 25, 32, 33, 34, 35]


@pytest.fixture
def rect() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((8, 10), np.int32)
    labels[RECT] = 7
    image = (10 * np.arange(8)[:, None] + np.arange(10)[None, :]).astype(np.uint16)
    return labels, image


def only_row(table: pd.DataFrame) -> pd.Series:
    assert len(table) == 1
    return table.iloc[0]


def test_one_rectangle_by_hand(rect) -> None:
    labels, image = rect
    row = only_row(measure_objects(labels, image))
    assert row["Object ID"] == 7
    # QuPath's frame: a pixel's centre is at +0.5; columns 2..5 -> 4.0, rows 1..3 -> 2.5.
    assert row["Centroid X px"] == pytest.approx(4.0)
    assert row["Centroid Y px"] == pytest.approx(2.5)
    assert row["Area px^2"] == 12
    # Moments of a w x h block: variance (w^2 - 1) / 12 per axis; axis = 4 * sqrt(variance).
    var_x, var_y = (4**2 - 1) / 12, (3**2 - 1) / 12
    assert row["Major axis length px"] == pytest.approx(4 * math.sqrt(var_x))
    assert row["Minor axis length px"] == pytest.approx(4 * math.sqrt(var_y))
    assert row["Eccentricity"] == pytest.approx(math.sqrt(1 - var_y / var_x))
    assert row["Solidity"] == pytest.approx(1.0)
    assert 8 <= row["Perimeter px"] <= 14  # scikit-image's estimate; the pixel outline is 14
    assert row["Channel 1: Mean"] == pytest.approx(sum(RECT_VALUES) / 12)
    assert row["Channel 1: Median"] == pytest.approx((23 + 24) / 2)
    assert row["Channel 1: Min"] == 12
    assert row["Channel 1: Max"] == 35
    mean = sum(RECT_VALUES) / 12
    sample_sd = math.sqrt(sum((v - mean) ** 2 for v in RECT_VALUES) / 11)
    assert row["Channel 1: Std.Dev."] == pytest.approx(sample_sd)
    assert not any("µm" in c for c in row.index)


def test_micrometre_columns(rect) -> None:
    labels, image = rect
    px = only_row(measure_objects(labels, image))
    um = only_row(measure_objects(labels, image, pixel_size=0.5, image_name="slide 1"))
    assert um["Image"] == "slide 1"
    assert um["Area µm^2"] == pytest.approx(12 * 0.25)
    assert um["Centroid X µm"] == pytest.approx(4.0 * 0.5)
    assert um["Centroid Y µm"] == pytest.approx(2.5 * 0.5)
    for name in ("Perimeter", "Major axis length", "Minor axis length"):
        assert um[f"{name} µm"] == pytest.approx(px[f"{name} px"] * 0.5)
        assert um[f"{name} px"] == pytest.approx(px[f"{name} px"])
    columns = list(um.index)
    assert columns[:4] == ["Image", "Object ID", "Centroid X px", "Centroid X µm"]
    assert columns.index("Area µm^2") == columns.index("Area px^2") + 1


def test_offset_ids_and_large_ids(rect) -> None:
    labels, image = rect
    labels[6:8, 0:2] = 3
    row = only_row(measure_objects(labels, image, offset=(100, 200), ids=[7, 12345]))
    assert row["Object ID"] == 7
    assert row["Centroid X px"] == pytest.approx(204.0)
    assert row["Centroid Y px"] == pytest.approx(102.5)
    table = measure_objects(labels, image)
    assert table["Object ID"].tolist() == [3, 7]
    big = np.where(labels == 7, np.int64(2**40), labels)  # global ids of a crop
    table = measure_objects(big, image)
    assert table["Object ID"].tolist() == [3, 2**40]
    assert table["Area px^2"].tolist() == [4, 12]
    single = np.zeros_like(labels)
    single[0, 0] = 1
    assert only_row(measure_objects(single, image))["Channel 1: Std.Dev."] == 0  # QuPath: 0


def test_multichannel_and_names(rect) -> None:
    labels, image = rect
    stack = np.stack([image, image * 2.0], axis=-1).astype(np.float32)
    row = only_row(measure_objects(labels, stack))
    assert row["Channel 1: Mean"] == pytest.approx(23.5)
    assert row["Channel 2: Mean"] == pytest.approx(47.0)
    assert row["Channel 2: Max"] == pytest.approx(70.0)
    row = only_row(measure_objects(labels, stack, channel_names=["DAPI", "CD45"]))
    assert row["CD45: Median"] == pytest.approx(47.0)
    assert "Channel 1: Mean" not in row.index
    cyx = only_row(measure_objects(labels, np.moveaxis(stack, -1, 0)))  # as OME-TIFFs hold it
    assert cyx["Channel 2: Mean"] == pytest.approx(47.0)


def test_compartments_by_hand(rect) -> None:
    labels, image = rect
    labels[5:7, 0:3] = 9  # a cell without a nucleus
    nuclei = np.zeros_like(labels)
    nuclei[2:4, 3:5] = 4  # 2x2 inside cell 7
    nuclei[0, 3] = 4  # ...and one pixel outside every cell: clipped away
    nuclei[1, 2] = 5  # a second, smaller nucleus in cell 7: not its nucleus
    table = measure_objects(labels, image, nuclei=nuclei, channel_names=["DAPI"], pixel_size=2)
    cell7, cell9 = table.iloc[0], table.iloc[1]
    assert cell7["Nucleus ID"] == 4 and math.isnan(cell9["Nucleus ID"])
    assert cell7["Cell: Area px^2"] == 12
    assert cell7["Nucleus: Area px^2"] == 4
    assert cell7["Cytoplasm: Area px^2"] == 8
    assert cell7["Cytoplasm: Area µm^2"] == 32
    assert cell7["Nucleus/Cell area ratio"] == pytest.approx(4 / 12)
    nucleus_values = [23, 24, 33, 34]
    cytoplasm_values = sorted(set(RECT_VALUES) - set(nucleus_values))
    assert cell7["Nucleus: DAPI: Mean"] == pytest.approx(np.mean(nucleus_values))
    assert cell7["Nucleus: DAPI: Std.Dev."] == pytest.approx(np.std(nucleus_values, ddof=1))
    assert cell7["Cytoplasm: DAPI: Mean"] == pytest.approx(np.mean(cytoplasm_values))
    assert cell7["Cytoplasm: DAPI: Median"] == pytest.approx(np.median(cytoplasm_values))
    assert cell7["Cell: DAPI: Mean"] == pytest.approx(23.5)
    assert cell9["Cell: Area px^2"] == 6
    assert cell9["Cytoplasm: Area px^2"] == 6
    assert math.isnan(cell9["Nucleus: Area px^2"])
    assert math.isnan(cell9["Nucleus: DAPI: Mean"])
    assert math.isnan(cell9["Nucleus/Cell area ratio"])
    assert cell9["Cytoplasm: DAPI: Mean"] == pytest.approx(cell9["Cell: DAPI: Mean"])
    names = list(table.columns)
    assert names[:3] == ["Object ID", "Nucleus ID", "Centroid X px"]
    assert "Area px^2" not in names and "DAPI: Mean" not in names
    for prefix in ("Nucleus: ", "Cell: "):
        for shape in ("Area µm^2", "Perimeter µm", "Eccentricity", "Solidity"):
            assert prefix + shape in names


def test_one_nucleus_per_cell() -> None:
    """A nucleus across two cells belongs to the one it overlaps most; the other has none."""
    cells = np.zeros((4, 8), np.int32)
    cells[:, :4], cells[:, 4:] = 1, 2
    nuclei = np.zeros_like(cells)
    nuclei[1:3, 1:6] = 8  # 6 pixels in cell 1, 4 in cell 2
    table = measure_objects(cells, nuclei=nuclei)
    assert table["Nucleus ID"].tolist()[0] == 8
    assert math.isnan(table["Nucleus ID"].tolist()[1])
    assert table["Nucleus: Area px^2"].tolist()[0] == 6
    assert table["Cytoplasm: Area px^2"].tolist() == [10, 16]
    filled = measure_objects(cells, nuclei=np.where(cells == 1, 5, 0))  # nucleus = whole cell
    assert filled["Cytoplasm: Area px^2"].tolist() == [0, 16]


def test_empty_image_has_the_columns(rect) -> None:
    labels, image = rect
    full = measure_objects(labels, image, nuclei=labels, pixel_size=1.0)
    empty = measure_objects(np.zeros_like(labels), image, nuclei=labels, pixel_size=1.0)
    assert len(empty) == 0
    assert list(empty.columns) == list(full.columns)
    assert len(measure_objects(labels, image, ids=[99])) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lab, img: measure_objects(lab[None], img), "2D label image"),
        (lambda lab, img: measure_objects(lab.astype(float), img), "whole numbers"),
        (lambda lab, img: measure_objects(-lab, img), "negative"),
        (lambda lab, img: measure_objects(lab, img[:4]), "does not match"),
        (lambda lab, img: measure_objects(lab, img.astype(complex)), "integer or floating"),
        (lambda lab, img: measure_objects(lab, img, nuclei=lab[:4]), "same shape"),
        (lambda lab, img: measure_objects(lab, img, channel_names=["a", "b"]), "channel name"),
        (lambda lab, img: measure_objects(lab, img, pixel_size=0), "positive"),
    ],
)
def test_bad_input(rect, call, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        call(*rect)


def test_pixel_size_from_tiff(tmp_path: Path) -> None:
    data = np.zeros((4, 5), np.uint8)
    ome = tmp_path / "a.ome.tif"
    tifffile.imwrite(ome, data, ome=True, metadata={"PhysicalSizeX": 0.325, "axes": "YX"})
    assert pixel_size_from_tiff(ome) == pytest.approx(0.325)
    nm = tmp_path / "nm.ome.tif"
    metadata = {"PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm", "axes": "YX"}
    tifffile.imwrite(nm, data, ome=True, metadata=metadata)
    assert pixel_size_from_tiff(nm) == pytest.approx(0.65)
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, data, resolution=(20_000, 20_000), resolutionunit="CENTIMETER")
    assert pixel_size_from_tiff(cm) == pytest.approx(0.5)
    imagej = tmp_path / "ij.tif"
    tifffile.imwrite(imagej, data, imagej=True, resolution=(4, 4), metadata={"unit": "micron"})
    assert pixel_size_from_tiff(imagej) == pytest.approx(0.25)
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, data, resolution=(72, 72), resolutionunit="INCH")
    assert pixel_size_from_tiff(dpi) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)
    assert pixel_size_from_tiff(plain) is None
    assert pixel_size_from_tiff(tmp_path / "image.png") is None
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    with pytest.raises(BadInputError, match="Could not read"):
        pixel_size_from_tiff(broken)


def test_write_table_round_trip(rect, tmp_path: Path) -> None:
    labels, image = rect
    labels[6:8, 0:2] = 3
    table = measure_objects(labels, image, nuclei=labels * (labels == 7), pixel_size=0.5)
    for name, separator in (("t.tsv", "\t"), ("t.csv", ",")):
        path = write_table(table, tmp_path / name)
        assert path.read_text(encoding="utf-8").splitlines()[0].split(separator)[:2] == [
            "Object ID",
            "Nucleus ID",
        ]
        back = pd.read_csv(path, sep=separator)
        assert list(back.columns) == list(table.columns)
        pd.testing.assert_frame_equal(back, table, check_dtype=False)
        assert "NaN" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.tsv"]  # no .part left
    with pytest.raises(BadInputError, match=r"\.csv or \.tsv"):
        write_table(table, tmp_path / "t.xlsx")


def test_geojson_with_measurements(rect, tmp_path: Path) -> None:
    labels, image = rect
    labels[6:8, 0:2] = 3
    table = measure_objects(labels, image, nuclei=np.where(labels == 7, 1, 0), offset=(10, 20))
    features = measured_features(labels, table, offset=(10, 20), object_type="cell")
    plain = labels_to_features(labels, offset=(20, 10))
    assert [f["properties"]["label_id"] for f in features] == [3, 7]
    for feature, reference in zip(features, plain, strict=True):
        values = feature["properties"]["measurements"]
        assert feature["geometry"] == reference["geometry"]
        assert feature["properties"]["objectType"] == "cell"
        # Our centroid and the GeoJSON module's agree: one coordinate frame.
        for key in ("Centroid X px", "Centroid Y px"):
            assert values[key] == pytest.approx(reference["properties"]["measurements"][key])
        assert "Object ID" not in values
    cell3, cell7 = (f["properties"]["measurements"] for f in features)
    assert cell7["Cell: Channel 1: Mean"] == pytest.approx(23.5)
    assert cell7["Nucleus ID"] == 1
    assert "Nucleus: Area px^2" not in cell3  # NaN left out: GeoJSON has no NaN
    path = write_features(tmp_path / "cells.geojson", features)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in GeoJSON"))
    assert read_features(path)[1]["properties"]["measurements"]["Cell: Area px^2"] == 12
    only7 = measured_features(labels, table[table["Object ID"] == 7])
    assert [f["properties"]["label_id"] for f in only7] == [7]


def test_cli_measure_end_to_end(rect, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from napari_cellsparse.cli import main

    labels, image = rect
    labels[5:7, 0:3] = 9
    nuclei = np.where(labels == 7, 4, 0).astype(np.uint16)
    nuclei[1, :] = 0
    tifffile.imwrite(tmp_path / "masks.tif", labels)
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei)
    channels = np.stack([image, 2 * image])  # CYX, as OME-TIFFs hold channels
    tifffile.imwrite(
        tmp_path / "img.ome.tif", channels, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5}
    )
    argv = ["measure", "--labels", str(tmp_path / "masks.tif"), "--image",
            str(tmp_path / "img.ome.tif"), "--nuclei", str(tmp_path / "nuclei.tif"),
            "--channel-names", "DAPI, CD45", "--out", str(tmp_path / "table.tsv"),
            "--geojson", str(tmp_path / "cells.geojson")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 objects" in out and "pixel size 0.5 µm from img.ome.tif" in out
    table = pd.read_csv(tmp_path / "table.tsv", sep="\t")
    assert table["Image"].tolist() == ["img.ome.tif"] * 2
    assert table["Object ID"].tolist() == [7, 9]
    assert table["Nucleus: Area µm^2"].tolist()[0] == pytest.approx(8 * 0.25)
    assert table["Cytoplasm: Area px^2"].tolist() == [4, 6]
    assert table["Cell: CD45: Mean"].tolist()[0] == pytest.approx(47.0)
    assert table["Centroid X µm"].tolist()[0] == pytest.approx(2.0)
    features = read_features(tmp_path / "cells.geojson")
    assert [f["properties"]["objectType"] for f in features] == ["cell", "cell"]
    assert features[0]["properties"]["measurements"]["Cell: DAPI: Max"] == 35

    argv = ["measure", "--labels", str(tmp_path / "masks.tif"), "--pixel-size", "2",
            "--out", str(tmp_path / "shapes.csv")]  # fmt: skip
    assert main(argv) == 0
    shapes = pd.read_csv(tmp_path / "shapes.csv")
    assert shapes["Area µm^2"].tolist() == [48, 24]
    assert "Image" in shapes and not any(": Mean" in c for c in shapes.columns)


def test_cli_measure_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from napari_cellsparse.cli import main

    tifffile.imwrite(tmp_path / "masks.tif", np.ones((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "img.tif", np.ones((5, 4), np.uint8))
    base = ["measure", "--labels", str(tmp_path / "masks.tif"), "--out"]
    assert main([*base, str(tmp_path / "t.tsv"), "--image", str(tmp_path / "img.tif")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "t.xlsx")]) == 2
    err = capsys.readouterr().err
    assert ".csv or .tsv" in err and "Traceback" not in err
    assert main([*base, str(tmp_path / "t.tsv"), "--image", str(tmp_path / "none.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "t.tsv").exists()
