"""Large images: tiles embedded lazily, prompts anywhere, automask merged across tiles.

The tiles here are small (256 px) so that a few encoder runs cover an image with seams;
the encoder resizes each tile to 1024 as it would a 1024 tile of a real slide.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from scipy import ndimage as ndi
from skimage.draw import ellipse

from napari_cellsparse._testing import RegionOracleDecoder
from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.images import intensity_ranges, to_rgb_uint8
from napari_cellsparse.core.progress import Progress, run_sync
from napari_cellsparse.sam.embedding import EmbeddingCache
from napari_cellsparse.sam.large_images import Region, TiledImage, tile_grid
from napari_cellsparse.sam.prompting import Promptable, SamPrompter
from napari_cellsparse.samples.generated import make_nuclei

TILE, OVERLAP = 256, 16


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray]:
    """480 x 480: 2 x 2 tiles of 256 overlapping by 32 px, nuclei up to 20 px across."""
    return make_nuclei((480, 480), n_objects=100, radius=(6.0, 10.0), seed=5)


class CountingArray:
    """An array read only by slicing (as a zarr or dask array would be), counting pixels."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.pixels_read = 0

    def __getitem__(self, key):
        out = self.data[key]
        self.pixels_read += out.size
        return out


# -- the grid ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [
        ((4096, 4096), 1024, 128),
        ((10000, 7000), 1024, 128),
        ((480, 300), 256, 16),
        ((50, 900), 256, 0),
    ],
)
def test_tiles_cover_the_image_with_the_overlap(shape, tile, overlap) -> None:
    tiles = tile_grid(shape, tile, overlap)
    covered = np.zeros(shape, dtype=np.uint8)
    for region in tiles:
        assert region.shape == (min(tile, shape[0]), min(tile, shape[1]))
        covered[region.slices] += 1
    assert covered.min() >= 1
    ys = sorted({r.y0 for r in tiles})
    xs = sorted({r.x0 for r in tiles})
    assert len(tiles) == len(ys) * len(xs)
    for starts in (ys, xs):
        for a, b in itertools.pairwise(starts):
            assert tile - (b - a) >= overlap  # neighbours overlap by at least ``overlap``
    if shape == (4096, 4096):
        assert len(tiles) == 25  # stride at most 896: five tiles per side


@pytest.mark.parametrize(("tile", "overlap"), [(32, 0), (256, 128), (256, -1)])
def test_bad_tiling_is_refused(tile, overlap) -> None:
    with pytest.raises(BadInputError):
        tile_grid((1000, 1000), tile, overlap)


def test_tiles_are_stretched_like_the_whole_image() -> None:
    image, _ = make_nuclei((300, 200), n_objects=10, seed=1)
    whole = to_rgb_uint8(image)
    ranges = intensity_ranges(image)
    np.testing.assert_array_equal(to_rgb_uint8(image, ranges=ranges), whole)
    # a tile stretched with the image's range is the same pixels as the image's RGB there
    np.testing.assert_array_equal(to_rgb_uint8(image[:100, 50:], ranges=ranges), whole[:100, 50:])
    rgb = np.dstack([image.astype(np.uint8)] * 3)
    assert intensity_ranges(rgb) is None  # an RGB picture is used as it is
    lazy = CountingArray(image)
    sampled = intensity_ranges(lazy, max_pixels=image.size // 9)
    assert lazy.pixels_read <= image.size // 9  # a large image: every third row and column
    np.testing.assert_allclose(sampled, ranges, rtol=0.1)


def test_bad_images_are_refused(vit_t_model) -> None:
    prompter = SamPrompter(vit_t_model, "t")
    with pytest.raises(BadInputError, match="YXC"):
        TiledImage(prompter, np.zeros((3, 600, 600, 2)))
    with pytest.raises(BadInputError, match="overlap"):
        TiledImage(prompter, np.zeros((600, 600)), tile=256, overlap=200)


# -- prompts ---------------------------------------------------------------------------------


def test_box_in_the_last_tile_embeds_that_tile_only(
    vit_t_model, large, encoder_calls: list[int]
) -> None:
    image, _ = large
    lazy = CountingArray(image)
    prompter = SamPrompter(vit_t_model, "tiles")
    tiled = TiledImage(prompter, lazy, tile=TILE, overlap=OVERLAP)
    assert len(tiled.tiles) == 4 and encoder_calls == []
    sample_read = lazy.pixels_read
    assert sample_read <= image.size  # the intensity range reads the image once at most

    box = np.array([400.0, 410.0, 440.0, 450.0])  # x0, y0, x1, y1: only the last tile holds it
    last = tiled.tiles[-1]
    assert tiled.regions_for_boxes([box]) == [last]
    assert tiled.missing([last]) == [last]
    (mask,) = tiled.boxes([box])
    assert len(encoder_calls) == 1 and tiled.computed == 1
    assert lazy.pixels_read - sample_read == TILE * TILE  # one tile read (once)
    assert mask.shape == image.shape

    # The same as prompting that tile on its own, moved to image pixels.
    alone = SamPrompter(vit_t_model, "alone")
    run_sync(alone.set_image(to_rgb_uint8(image[last.slices], ranges=tiled.ranges)))
    (expected,) = alone.boxes([box - [last.x0, last.y0, last.x0, last.y0]])
    full = np.zeros(image.shape, dtype=bool)
    full[last.slices] = expected.full()
    np.testing.assert_array_equal(mask.full(), full)
    assert mask.score == pytest.approx(expected.score)

    # Another box and a point prompt in that tile: no new embedding.
    again = tiled.boxes([[300, 300, 340, 350]])
    preview = tiled.points([[420, 430]], [1])
    assert len(encoder_calls) == 2  # only ``alone``
    assert again[0].shape == preview.shape == image.shape
    assert tiled.current == last


def test_prompts_go_to_the_tile_that_holds_them_best(vit_t_model, large) -> None:
    image, _ = large
    tiled = TiledImage(SamPrompter(vit_t_model, "t"), image, tile=TILE, overlap=OVERLAP)
    first, second = tiled.tiles[0], tiled.tiles[1]
    # In the overlap of the first two tiles, nearer the second's cut edge: the first tile.
    assert tiled.region_for((226, 10, 240, 30)) == first
    assert tiled.region_for((242, 10, 254, 30)) == second
    # Across the seam and wider than the overlap: a window of its own around the box.
    window = tiled.region_for((200, 100, 280, 160))
    assert window not in tiled.tiles
    assert window.holds((200, 100, 280, 160)) and window.shape == (TILE, TILE)
    # Bigger than a tile: a window 25 % larger than the box, inside the image.
    big = tiled.region_for((10, 20, 400, 300))
    assert big.holds((10, 20, 400, 300)) and max(big.shape) <= 480
    with pytest.raises(BadInputError, match="outside"):
        tiled.region_for_points([[500, 10]], [1])
    with pytest.raises(BadInputError, match="outside"):
        tiled.boxes([[500, 500, 600, 600]])


def test_disk_cache_serves_tiles_to_a_new_session(
    tmp_path: Path, vit_t_model, large, encoder_calls: list[int]
) -> None:
    image, _ = large
    disk = tmp_path / "embeddings"
    box = [[30, 30, 70, 80]]
    first = TiledImage(
        SamPrompter(vit_t_model, "disk", EmbeddingCache(disk_dir=disk)),
        image,
        tile=TILE,
        overlap=OVERLAP,
    )
    (a,) = first.boxes(box)
    assert len(encoder_calls) == 1 and len(list(disk.glob("*.pt"))) == 1
    second = TiledImage(
        SamPrompter(vit_t_model, "disk", EmbeddingCache(disk_dir=disk)),
        image,
        tile=TILE,
        overlap=OVERLAP,
    )
    assert second.missing(second.tiles) == second.tiles[1:]
    (b,) = second.boxes(box)
    assert len(encoder_calls) == 1 and second.computed == 0
    np.testing.assert_array_equal(a.full(), b.full())


def test_disk_cache_stays_within_its_limit(tmp_path: Path, vit_t_model, large) -> None:
    image, _ = large
    cache = EmbeddingCache(max_items=1, disk_dir=tmp_path, max_disk_mb=9.0)  # two embeddings
    tiled = TiledImage(SamPrompter(vit_t_model, "limit", cache), image, tile=TILE, overlap=OVERLAP)
    events: list[Progress] = []
    assert run_sync(tiled.embed_all(), progress=events.append) == 4
    assert events[-1].total == 4 and "Tile 4 of 4" in events[-1].message
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 2 and len(cache) == 1
    assert tiled.missing(tiled.tiles) == tiled.tiles[:2]  # the oldest went first


# -- automask --------------------------------------------------------------------------------


def _truth(labels: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """What the oracle can answer: each object, and (odd ids) the object grown by 3 px."""
    out = {}
    for k in range(1, int(labels.max()) + 1):
        obj = labels == k
        out[("object", k)] = obj
        if k % 2:
            out[("grown", k)] = ndi.binary_dilation(obj, iterations=3)
    return out


def _match(result, labels) -> dict[tuple[str, int], int]:
    """How many masks match each true mask at IoU >= 0.9 (each mask must match one)."""
    truth = _truth(labels)
    hits: dict[tuple[str, int], int] = {}
    for m in result.masks:
        full = m.full()
        best, key = 0.0, None
        for name, t in truth.items():
            inter = (full & t).sum()
            if inter:
                iou = inter / (full | t).sum()
                if iou > best:
                    best, key = iou, name
        assert best >= 0.9, f"a mask at {m.bbox()} is no object (best IoU {best:.2f})"
        hits[key] = hits.get(key, 0) + 1
    return hits


def _oracle_tiles(vit_t_model, image, labels, **kwargs) -> TiledImage:
    tiled = TiledImage(SamPrompter(vit_t_model, "oracle"), image, **kwargs)
    tiled.prompter.decoder = RegionOracleDecoder(tiled.prompter.decoder, labels, tiled)
    return tiled


def test_automask_objects_on_tile_borders_are_merged_not_cut_or_doubled(vit_t_model, large) -> None:
    image, labels = large
    tiled = _oracle_tiles(vit_t_model, image, labels, tile=TILE, overlap=OVERLAP)
    seams = [t.overlap(u) for t in tiled.tiles for u in tiled.tiles if t != u]
    on_seams = {int(k) for s in seams if s is not None for k in np.unique(labels[s.slices]) if k}
    cut = [  # objects that some tile sees only in part
        k
        for k in on_seams
        if any(0 < (labels[t.slices] == k).sum() < (labels == k).sum() for t in tiled.tiles)
    ]
    assert len(cut) >= 10
    events: list[Progress] = []
    result = run_sync(tiled.automask({"points_per_side": 32}), progress=events.append)
    assert tiled.computed == 4
    assert events[-1].message.startswith("Merging")
    hits = _match(result, labels)
    assert max(hits.values()) == 1  # nothing doubled
    assert all(("object", k) in hits for k in range(1, int(labels.max()) + 1))  # nothing lost
    final = result.labels()
    for k in cut:
        found = np.unique(final[labels == k])
        assert len(found) == 1 and found[0] > 0  # one label covers the whole object


def test_an_object_larger_than_the_overlap_is_joined_from_its_pieces(vit_t_model) -> None:
    labels = np.zeros((480, 480), dtype=np.int32)
    rr, cc = ellipse(120, 240, 30, 90, shape=labels.shape)  # 180 px wide, across x 224..256
    labels[rr, cc] = 1
    rr, cc = ellipse(360, 100, 12, 12, shape=labels.shape)
    labels[rr, cc] = 2
    image = (labels > 0).astype(np.uint16) * 1000 + 100
    tiled = _oracle_tiles(vit_t_model, image, labels, tile=TILE, overlap=OVERLAP)
    assert not any(t.holds((150, 90, 331, 151)) for t in tiled.tiles)  # no tile holds it
    result = run_sync(tiled.automask({"points_per_side": 16}))
    hits = _match(result, labels)
    assert hits[("object", 1)] == 1 and hits[("object", 2)] == 1
    final = result.labels()
    assert len(np.unique(final[labels == 1])) == 1


def test_automask_cancel_stops_between_tiles_and_batches(vit_t_model, large) -> None:
    image, labels = large
    tiled = _oracle_tiles(vit_t_model, image, labels, tile=TILE, overlap=OVERLAP)
    stop = threading.Event()
    seen: list[Progress] = []

    def progress(event: Progress) -> None:
        seen.append(event)
        if event.message.startswith("Tile 2/4: Decoding"):
            stop.set()

    params = {"points_per_side": 8, "points_per_batch": 16}
    with pytest.raises(CancelledError):
        run_sync(tiled.automask(params, cancel=stop), progress=progress)
    # It stopped at the next batch of points: one of four batches of the second tile.
    assert seen[-1].message == "Tile 2/4: Decoding points (16/64)"
    assert tiled.computed == 1  # the second tile's embedding is cached, counted when used
    assert tiled.missing(tiled.tiles) == tiled.tiles[2:]


def test_region_overlap() -> None:
    a, b = Region(0, 0, 10, 10), Region(5, 5, 20, 20)
    assert a.overlap(b) == Region(5, 5, 10, 10)
    assert a.overlap(Region(10, 0, 20, 10)) is None


@pytest.mark.parametrize("kind", [SamPrompter, TiledImage])
def test_the_prompter_and_a_tiled_image_answer_prompts_alike(kind: type) -> None:
    """Both are :class:`Promptable`, with the protocol's parameters and defaults, so front
    ends hand prompts to either."""
    assert issubclass(kind, Promptable)
    for name in ("boxes", "points", "prompt"):
        expected = inspect.signature(getattr(Promptable, name)).parameters
        found = inspect.signature(getattr(kind, name)).parameters
        assert [(p.name, p.default) for p in found.values()] == [
            (p.name, p.default) for p in expected.values()
        ], name
