"""OME-Zarr: block-wise labels with a pyramid, opened by the ome-zarr reader and napari, and
OME-Zarr images read at any resolution level."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label

from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.formats.image_sources import ImageSource, open_image
from napari_cellsparse.formats.ome_zarr import pyramid_shapes
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.scale.blockwise import (
    segment_blockwise,
    segment_to_file,
    segment_to_ome_zarr,
)

pytest.importorskip("ome_zarr")


def threshold_segmenter(pixels: np.ndarray) -> np.ndarray:
    """A real (classical) segmenter: bright connected components."""
    return label(pixels[..., 0] > np.float64(pixels.max()) * 0.5).astype(np.int32)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    picture, _ = make_nuclei((300, 260), n_objects=40, radius=(6.0, 9.0), seed=3)
    return picture


def ome_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def test_labels_level_0_equals_memory_and_levels_are_every_second_pixel(
    tmp_path: Path, image: np.ndarray
) -> None:
    source = ImageSource(image, name="nuclei", pixel_size=0.325)
    memory = run_sync(segment_blockwise(source, threshold_segmenter, block=96, halo=32)).labels
    assert memory.max() > 20
    out = tmp_path / "nuclei_labels.ome.zarr"
    result = run_sync(
        segment_to_file(source, threshold_segmenter, out, 96, 32, min_side=40), lambda e: None
    )
    np.testing.assert_array_equal(result.labels[:], memory)
    shapes = pyramid_shapes(memory.shape, 40)
    assert shapes == [(300, 260), (150, 130), (75, 65), (38, 33)]
    import zarr

    group = zarr.open_group(str(out), mode="r")
    for k, shape in enumerate(shapes):
        level = np.asarray(group[str(k)][:])
        assert level.shape == shape and level.dtype == np.int32
        step = 2**k
        np.testing.assert_array_equal(level, memory[::step, ::step])
        assert set(np.unique(level)) <= set(np.unique(memory))  # no invented ids
    attrs = ome_attrs(out)
    assert attrs["version"] == "0.5" and attrs["image-label"]["version"] == "0.5"
    (multiscale,) = attrs["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"micrometer"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[0.325 * 2**k, 0.325 * 2**k] for k in range(4)]
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei_labels.ome.zarr"]


def _written_and_in_memory(image: np.ndarray, out: Path) -> np.ndarray:
    """Write ``image``'s labels to ``out`` as OME-Zarr (128 px blocks, a pyramid down to 64 px);
    return the same block-wise labels made in memory."""
    run_sync(
        segment_to_ome_zarr(ImageSource(image), threshold_segmenter, out, 128, 32, min_side=64)
    )
    return run_sync(
        segment_blockwise(ImageSource(image), threshold_segmenter, block=128, halo=32)
    ).labels


def test_the_ome_zarr_reader_opens_the_labels_with_their_pyramid(
    tmp_path: Path, image: np.ndarray
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    out = tmp_path / "labels.ome.zarr"
    memory = _written_and_in_memory(image, out)
    nodes = list(Reader(parse_url(str(out)))())
    assert len(nodes) == 1
    node = nodes[0]
    assert {type(s) for s in node.specs} >= {Label, Multiscales}
    assert [a.shape for a in node.data] == [(300, 260), (150, 130), (75, 65), (38, 33)]
    for k, level in enumerate(node.data):
        np.testing.assert_array_equal(np.asarray(level), memory[:: 2**k, :: 2**k])
    assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]


@pytest.mark.gui
def test_napari_ome_zarr_opens_the_labels_as_a_multiscale_labels_layer(
    make_napari_viewer, tmp_path: Path, image: np.ndarray
) -> None:
    pytest.importorskip("napari_ome_zarr")
    out = tmp_path / "labels.ome.zarr"
    memory = _written_and_in_memory(image, out)
    viewer = make_napari_viewer()
    layers = viewer.open(str(out), plugin="napari-ome-zarr")
    assert [type(layer).__name__ for layer in layers] == ["Labels"]
    layer = layers[0]
    assert layer.multiscale and len(layer.data) == 4
    np.testing.assert_array_equal(np.asarray(layer.data[0]), memory)
    np.testing.assert_array_equal(np.asarray(layer.data[2]), memory[::4, ::4])


def test_an_interrupted_or_unwritable_output_leaves_no_files(
    tmp_path: Path, image: np.ndarray
) -> None:
    cancel = threading.Event()
    work = segment_to_ome_zarr(
        ImageSource(image), threshold_segmenter, tmp_path / "x.ome.zarr", 96, 32, cancel=cancel
    )
    next(work)
    cancel.set()
    with pytest.raises(CancelledError):
        run_sync(work)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(BadInputError, match="Cannot write"):
        run_sync(
            segment_to_ome_zarr(
                ImageSource(image), threshold_segmenter, tmp_path / "a_file" / "y.ome.zarr"
            )
        )
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def write_ome_zarr_image(path: Path, data: np.ndarray, version: str) -> list[np.ndarray]:
    """A TCZYX OME-Zarr image written by the ome-zarr package (0.5 µm pixels, 3 levels);
    its levels as the ome-zarr reader reads them."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    fmt = FormatV05() if version == "0.5" else FormatV04()
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    write_image(
        data,
        group,
        axes="tczyx",
        fmt=fmt,
        scale={"y": 0.5, "x": 0.5},
        axes_units={"y": "micrometer", "x": "micrometer"},
        scale_factors=(2, 4),
    )
    (node,) = [n for n in Reader(parse_url(str(path)))() if n.data]
    return [np.asarray(level) for level in node.data]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_images_are_read_at_any_level(tmp_path: Path, version: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(1, 2, 1, 256, 192), dtype=np.uint16)  # t c z y x
    path = tmp_path / "image.ome.zarr"
    levels = write_ome_zarr_image(path, data, version)
    assert len(levels) == 3
    for level, stored in enumerate(levels):
        with open_image(path, level=level) as source:
            cyx = stored[0, :, 0]
            assert source.shape == cyx.shape[1:] == (256 // 2**level, 192 // 2**level)
            assert source.axes == "CYX" and source.n_channels == 2
            np.testing.assert_array_equal(source.read_all(), np.moveaxis(cyx, 0, -1))
            assert source.pixel_size == pytest.approx(0.5 * 2**level)
    with pytest.raises(BadInputError, match="3 resolution level"):
        open_image(path, level=3)
    tif = tmp_path / "plain.tif"
    import tifffile

    tifffile.imwrite(tif, data[0, 0, 0])
    with pytest.raises(BadInputError, match="one resolution level"):
        open_image(tif, level=1)
