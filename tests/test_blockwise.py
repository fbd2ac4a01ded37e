"""Block-wise segmentation: seams, ownership, files in and out, and a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from skimage.measure import label

from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.core.tiling import block_grid
from napari_cellsparse.formats.image_sources import open_image, pixel_size_from_tiff
from napari_cellsparse.scale.block_measure import BlockMeasurements
from napari_cellsparse.scale.blockwise import (
    BlockObjects,
    ModelSegmenter,
    create_labels_array,
    segment_blockwise,
    segment_to_file,
)


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects (pixel for pixel), whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def threshold_segmenter(pixels: np.ndarray) -> np.ndarray:
    """A real (classical) segmenter: bright connected components."""
    return label(pixels[..., 0] > 100).astype(np.int32)


def border_image(block: int = 100, size: int = 300) -> tuple[np.ndarray, int]:
    """Disks centred exactly on block borders and corners, some between them; how many."""
    image = np.full((size, size), 20, np.uint16)
    centres = [(block, block), (block, 50), (50, block), (2 * block, 2 * block), (150, 150)]
    centres += [(2 * block, 37), (block + 0.5, 260), (263, 2 * block), (block, 2 * block)]
    for cy, cx in centres:
        rr, cc = disk((cy, cx), 11, shape=image.shape)
        image[rr, cc] = 200
    return image, len(centres)


def test_block_cores_tile_the_image_and_halos_stop_at_edges() -> None:
    blocks = block_grid((250, 130), block=100, halo=16)
    assert len(blocks) == 6
    covered = np.zeros((250, 130), int)
    for b in blocks:
        covered[b.core.slices] += 1
        assert b.outer.y0 == max(0, b.core.y0 - 16) and b.outer.x1 == min(130, b.core.x1 + 16)
    assert (covered == 1).all()
    with pytest.raises(BadInputError, match="at least 32"):
        block_grid((100, 100), block=8)


def test_objects_on_block_borders_are_segmented_as_on_the_whole_image() -> None:
    image, n = border_image()
    whole = threshold_segmenter(image[..., None])
    assert whole.max() == n
    result = run_sync(segment_blockwise(open_image(image), threshold_segmenter, block=100, halo=24))
    assert result.n_objects == n and result.blocks == 9 and result.cut_objects == 0
    assert same_objects(result.labels, whole)
    assert set(np.unique(result.labels)) == set(range(n + 1))  # ids unique over the image


def test_a_halo_too_small_is_reported_as_cut_objects() -> None:
    image, n = border_image()
    result = run_sync(segment_blockwise(open_image(image), threshold_segmenter, block=100, halo=4))
    assert result.cut_objects > 0
    assert result.n_objects >= n  # pieces are not merged: the count says the halo is too small


def test_labels_files_zarr_and_tiff_match_memory_and_leave_no_partial_files(
    tmp_path: Path,
) -> None:
    image, _ = border_image()
    memory = run_sync(segment_blockwise(open_image(image), threshold_segmenter, block=64, halo=24))
    for name in ("out.zarr", "out.tif"):
        result = run_sync(
            segment_to_file(open_image(image), threshold_segmenter, tmp_path / name, 64, 24)
        )
        written = (
            np.asarray(result.labels[:])
            if name.endswith(".zarr")
            else tifffile.imread(tmp_path / name)
        )
        np.testing.assert_array_equal(written, memory.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.zarr"]
    with pytest.raises(BadInputError, match=r"\.zarr or \.tif"):
        run_sync(segment_to_file(open_image(image), threshold_segmenter, tmp_path / "x.png"))


def test_cancel_stops_between_blocks_without_a_finished_file(tmp_path: Path) -> None:
    import threading

    image, _ = border_image()
    cancel = threading.Event()
    calls = []

    def segment(pixels: np.ndarray) -> np.ndarray:
        calls.append(1)
        cancel.set()
        return threshold_segmenter(pixels)

    with pytest.raises(CancelledError):
        run_sync(
            segment_to_file(open_image(image), segment, tmp_path / "c.tif", 100, 8), None, cancel
        )
    assert len(calls) == 1 and list(tmp_path.iterdir()) == []


def test_tiff_sources_memmap_tiled_and_ome_channels_first(tmp_path: Path) -> None:
    image, _ = border_image()
    two = np.stack([image, (image // 2).astype(np.uint16)])  # CYX
    tifffile.imwrite(tmp_path / "plain.tif", image)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(64, 64), compression="zlib")
    tifffile.imwrite(
        tmp_path / "two.ome.tif",
        two,
        ome=True,
        metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm"},
        tile=(64, 64),
        compression="zlib",
    )
    region = block_grid(image.shape, 100, 10)[4].outer
    for name in ("plain.tif", "tiled.tif"):
        with open_image(tmp_path / name) as source:
            assert source.shape == image.shape and source.n_channels == 1
            np.testing.assert_array_equal(source.read(region)[..., 0], image[region.slices])
    with open_image(tmp_path / "two.ome.tif") as source:
        assert source.axes == "CYX" and source.n_channels == 2
        assert source.pixel_size == pytest.approx(0.65)
        np.testing.assert_array_equal(source.read(region), np.moveaxis(two, 0, -1)[region.slices])
    assert pixel_size_from_tiff(tmp_path / "plain.tif") is None
    with pytest.raises(BadInputError, match="does not exist"):
        open_image(tmp_path / "missing.tif")
    with pytest.raises(BadInputError, match="2D image"):
        open_image(np.zeros((5, 6, 40, 40), np.uint8))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(BadInputError, match="Could not read"):
        open_image(tmp_path / "broken.tif")


def test_zarr_and_dask_sources_are_read_block_by_block(tmp_path: Path) -> None:
    import dask.array as da
    import zarr

    image, n = border_image()
    stored = zarr.open_array(
        str(tmp_path / "img.zarr"), mode="w", shape=image.shape, chunks=(64, 64), dtype=image.dtype
    )
    stored[:] = image
    for source in (open_image(tmp_path / "img.zarr"), open_image(da.from_array(image, 50))):
        out = create_labels_array(source.shape, tmp_path / f"{id(source)}.zarr", chunk=100)
        result = run_sync(segment_blockwise(source, threshold_segmenter, out, 100, 24))
        assert result.n_objects == n
        assert same_objects(np.asarray(out[:]), threshold_segmenter(image[..., None]))


# -- a trained model, block-wise vs whole ---------------------------------------------------


@pytest.fixture
def unet(nuclei_model_home: Path):
    from napari_cellsparse.training import load_model

    return load_model(nuclei_model_home / "models" / "nuclei")


def test_trained_model_block_wise_finds_the_whole_image_objects(unet) -> None:
    from stardist.matching import matching

    from napari_cellsparse.samples.generated import make_nuclei

    image, truth = make_nuclei((420, 380), n_objects=70, radius=(7.0, 9.0), seed=5)
    source = open_image(image)
    segmenter = ModelSegmenter(unet, source)
    assert segmenter.diameter == pytest.approx(unet.scale.train_diameter, rel=0.3)
    whole = unet.predict(image, diameter=segmenter.diameter)
    result = run_sync(segment_blockwise(source, segmenter, block=128, halo=segmenter.halo))
    assert result.blocks == 12 and result.cut_objects == 0
    m = matching(whole, result.labels, thresh=0.9)
    assert m.tp >= 0.98 * whole.max()
    assert matching(truth, result.labels, thresh=0.5).f1 >= 0.9
    with pytest.raises(BadInputError, match="1-channel"):
        ModelSegmenter(unet, open_image(np.stack([image, image], -1)))


def test_block_measurements_and_geojson_equal_those_of_the_whole_image() -> None:
    from napari_cellsparse.formats.geojson import labels_to_features
    from napari_cellsparse.scale.measure import measure_objects

    image, n = border_image()
    source = open_image(image)
    sink = BlockMeasurements(source, features=True, pixel_size=0.5)
    result = run_sync(
        segment_blockwise(source, threshold_segmenter, block=100, halo=24, sinks=[sink])
    )
    whole = measure_objects(result.labels, image, pixel_size=0.5, image_name="image")
    table = sink.table.sort_values("Object ID").reset_index(drop=True)
    assert len(table) == n and list(table.columns) == list(whole.columns)
    numeric = [c for c in whole.columns if c != "Image"]
    np.testing.assert_allclose(table[numeric].to_numpy(float), whole[numeric].to_numpy(float))
    expected = {
        f["properties"]["label_id"]: f["geometry"] for f in labels_to_features(result.labels)
    }
    found = {f["properties"]["label_id"]: f["geometry"] for f in sink.features}
    assert found == expected
    by_id = {f["properties"]["label_id"]: f["properties"]["measurements"] for f in sink.features}
    row = whole.iloc[3]
    assert by_id[int(row["Object ID"])]["Area µm^2"] == pytest.approx(row["Area µm^2"])


def test_an_image_without_objects_gives_an_empty_table_with_its_columns() -> None:
    blank = np.full((150, 120), 20, np.uint16)
    source = open_image(blank)
    sink = BlockMeasurements(source)
    result = run_sync(
        segment_blockwise(source, threshold_segmenter, block=64, halo=8, sinks=[sink])
    )
    assert result.n_objects == 0 and not result.labels.any()
    assert len(sink.table) == 0 and "Channel 1: Mean" in sink.table.columns


class RecordingSink:
    """A sink that keeps every block it is handed, and the labels it is finished with."""

    def __init__(self) -> None:
        self.blocks: list[BlockObjects] = []
        self.finished: list[object] = []

    def add(self, objects: BlockObjects) -> None:
        self.blocks.append(objects)

    def finish(self, labels: object) -> None:
        self.finished.append(labels)


def test_each_object_reaches_the_sinks_once_in_its_owning_block() -> None:
    image, n = border_image()
    sinks = [RecordingSink(), RecordingSink()]
    result = run_sync(
        segment_blockwise(open_image(image), threshold_segmenter, block=100, halo=24, sinks=sinks)
    )
    first, second = sinks
    assert first.finished == [result.labels] and second.finished == [result.labels]
    assert [b.region for b in first.blocks] == [b.region for b in second.blocks]
    handed = np.concatenate([b.ids for b in first.blocks])
    assert handed.tolist() == list(range(1, n + 1))  # every object once, in block order
    for objects in first.blocks:
        assert objects.ids.tolist() == sorted(objects.ids.tolist())
        window = result.labels[objects.region.slices]
        assert objects.labels.shape == window.shape == objects.pixels.shape[:2]
        mine = np.isin(window, objects.ids)
        np.testing.assert_array_equal(objects.labels, np.where(mine, window, 0))
        np.testing.assert_array_equal(objects.pixels[..., 0], image[objects.region.slices])
