"""Images, sparse labels, samples, generated data, devices and progress: the small engine parts."""

from __future__ import annotations

import csv
import threading
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.images import as_yxc, normalize_percentile, to_rgb_uint8
from napari_cellsparse.core.masks import PromptMask
from napari_cellsparse.core.progress import Progress, check_cancel, run_sync
from napari_cellsparse.core.sparse_labels import FIRST_CELL_ID, next_free_id, paint_masks
from napari_cellsparse.formats.tables import write_objects_csv
from napari_cellsparse.samples.catalog import load_sample, read_boxes, sample_file
from napari_cellsparse.samples.generated import make_nuclei

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return make_nuclei(shape=(96, 128), n_objects=8, seed=2)


# -- images ---------------------------------------------------------------------------------


def check_stretched(channel: np.ndarray, source: np.ndarray) -> None:
    """``channel`` is ``source`` stretched between its 1st and 99.8th percentiles."""
    assert channel.dtype == np.uint8
    assert channel.min() == 0 and channel.max() == 255
    # monotonic: a brighter source pixel is never darker
    order = np.argsort(source, axis=None, kind="stable")
    assert np.all(np.diff(channel.ravel()[order].astype(int)) >= 0)
    assert 0.005 <= np.mean(channel == 0) <= 0.03
    assert np.mean(channel == 255) <= 0.01


def test_rgb_of_a_2d_uint16_image(nuclei) -> None:
    image = nuclei[0]
    assert image.dtype == np.uint16
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (*image.shape, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1])
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    check_stretched(rgb[..., 0], image)


def test_rgb_of_a_float_image_is_scale_invariant(nuclei) -> None:
    image = nuclei[0]
    base = to_rgb_uint8(image)
    assert np.array_equal(to_rgb_uint8(image.astype(np.float32)), base)
    shifted = to_rgb_uint8(image.astype(np.float64) / 65535.0 * 3.0 - 1.0)
    assert np.abs(shifted.astype(int) - base).max() <= 1
    check_stretched(shifted[..., 0], image)


def test_rgb_of_yxc_images(nuclei) -> None:
    a = nuclei[0]
    b, _ = make_nuclei(shape=a.shape, n_objects=8, seed=3)
    c, _ = make_nuclei(shape=a.shape, n_objects=8, seed=4)
    d = (a // 2).astype(np.uint16)
    grey = to_rgb_uint8(a)
    assert np.array_equal(to_rgb_uint8(a[..., None]), grey)  # one channel
    two = to_rgb_uint8(np.stack([a, b], axis=-1))
    assert np.array_equal(two[..., 0], grey[..., 0])
    assert np.array_equal(two[..., 1], to_rgb_uint8(b)[..., 0])
    assert not two[..., 2].any()  # blue stays empty
    three = to_rgb_uint8(np.stack([a, b, c], axis=-1))
    for i, source in enumerate((a, b, c)):
        assert np.array_equal(three[..., i], to_rgb_uint8(source)[..., 0])
    four = np.stack([a, b, c, d], axis=-1)
    assert np.array_equal(to_rgb_uint8(four), three)  # the first three


def test_rgb_uint8_is_kept_as_it_is() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(40, 90, size=(50, 70, 3), dtype=np.uint8)  # a dim picture
    out = to_rgb_uint8(rgb)
    assert out.dtype == np.uint8
    assert np.array_equal(out, rgb)  # not stretched
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(to_rgb_uint8(rgba), rgb)
    # a non-contiguous view comes back contiguous with the same values
    view = rgb[:, ::2]
    assert to_rgb_uint8(view).flags.c_contiguous
    assert np.array_equal(to_rgb_uint8(view), view)
    # two uint8 channels are not a picture: they are stretched
    two = to_rgb_uint8(rgb[..., :2])
    assert two[..., :2].max() == 255


def test_channel_selection(nuclei) -> None:
    a = nuclei[0]
    b, _ = make_nuclei(shape=a.shape, n_objects=8, seed=3)
    c, _ = make_nuclei(shape=a.shape, n_objects=8, seed=4)
    stack = np.stack([a, b, c, a // 3], axis=-1)
    assert np.array_equal(to_rgb_uint8(stack, channels=[2]), to_rgb_uint8(c))
    assert np.array_equal(to_rgb_uint8(stack, channels=[1, 0]), to_rgb_uint8(np.stack([b, a], -1)))
    assert np.array_equal(
        to_rgb_uint8(stack, channels=[3, 2, 1]), to_rgb_uint8(stack[..., 1:][..., ::-1])
    )
    assert as_yxc(stack, [0, 2]).shape == (*a.shape, 2)
    for bad in ([4], [-1], []):
        with pytest.raises(BadInputError, match="hannel"):
            to_rgb_uint8(stack, channels=bad)
    with pytest.raises(BadInputError):
        to_rgb_uint8(a, channels=[1])  # a 2D image has one channel


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.full((20, 20), np.nan, dtype=np.float32), id="all-nan"),
        pytest.param(np.where(np.eye(20) > 0, np.nan, 1.0), id="one-nan-line"),
        pytest.param(np.where(np.eye(20) > 0, np.inf, 1.0), id="inf"),
        pytest.param(np.zeros((2, 3, 20, 20, 1)), id="5d"),
        pytest.param(np.zeros((5, 20, 20)), id="zyx-stack"),
        pytest.param(np.zeros((3, 20, 20), dtype=np.uint8), id="cyx"),
        pytest.param(np.zeros((20, 20, 5)), id="5-channels"),
        pytest.param(np.zeros((1, 1)), id="1-pixel"),
        pytest.param(np.zeros((1, 50)), id="1-row"),
        pytest.param(np.zeros(50), id="1d"),
        pytest.param(np.zeros((20, 20), dtype=np.complex64), id="complex"),
        pytest.param(np.full((20, 20), "a"), id="strings"),
        pytest.param(np.empty((20, 20), dtype=object), id="object"),
    ],
)
def test_bad_images(image: np.ndarray) -> None:
    with pytest.raises(BadInputError):
        to_rgb_uint8(image)


def test_nan_in_an_unused_channel_is_fine() -> None:
    image = np.ones((20, 20, 2), dtype=np.float32)
    image[..., 1] = np.nan
    image[5:10, 5:10, 0] = 3.0
    rgb = to_rgb_uint8(image, channels=[0])
    assert rgb[7, 7, 0] == 255 and rgb[0, 0, 0] == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32, bool])
def test_constant_image(dtype) -> None:
    image = np.ones((30, 40), dtype=dtype)
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert np.isfinite(normalize_percentile(image)).all()
    assert not rgb.any()


def test_bool_image() -> None:
    image = np.zeros((30, 40), dtype=bool)
    image[10:20, 10:30] = True
    rgb = to_rgb_uint8(image)
    assert (rgb[image] == 255).all() and (rgb[~image] == 0).all()


def test_normalize_percentile(nuclei) -> None:
    image = nuclei[0]
    out = normalize_percentile(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.percentile(out, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(out, 99.8) == pytest.approx(1.0, abs=1e-5)
    assert out.min() < 0 < 1 < out.max()  # not clipped
    custom = normalize_percentile(image, low=10, high=90)
    assert np.percentile(custom, 10) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(custom, 90) == pytest.approx(1.0, abs=1e-5)
    # per channel with axis
    stack = np.stack([image, image * 0.01 + 7.0], axis=-1)
    per = normalize_percentile(stack, axis=(0, 1))
    for c in range(2):
        assert np.percentile(per[..., c], 1.0) == pytest.approx(0.0, abs=1e-4)
        assert np.percentile(per[..., c], 99.8) == pytest.approx(1.0, abs=1e-4)
    assert not normalize_percentile(np.full((5, 5), 3.0)).any()


# -- sparse labels --------------------------------------------------------------------------


def prompt_mask(shape, y0, x0, y1, x1, score=0.5) -> PromptMask:
    window = np.ones((y1 - y0, x1 - x0), dtype=bool)
    return PromptMask(window, y0, x0, score, shape)


def test_paint_masks_into_an_empty_layer() -> None:
    labels = np.zeros((40, 50), dtype=np.int32)
    masks = [prompt_mask(labels.shape, 2, 2, 10, 10), prompt_mask(labels.shape, 20, 20, 30, 45)]
    ids = paint_masks(labels, masks)
    assert ids == [2, 3]
    assert (labels[2:10, 2:10] == 2).all()
    assert (labels[20:30, 20:45] == 3).all()
    assert set(np.unique(labels)) == {0, 2, 3}
    assert next_free_id(labels) == 4


def test_paint_masks_keeps_existing_cells_and_covers_background() -> None:
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[0:20, :] = 1  # background annotated
    labels[5:15, 5:15] = 7  # an existing cell
    before = labels.copy()
    ids = paint_masks(labels, [prompt_mask(labels.shape, 0, 0, 30, 30)])
    assert ids == [8]
    assert (labels[before == 7] == 7).all()  # never overwritten
    assert (labels[0:30, 0:30][before[0:30, 0:30] != 7] == 8).all()  # 0 and 1 taken
    assert (labels[30:, :] == 0).all() and (labels[:20, 30:] == 1).all()  # outside untouched


def test_paint_masks_skips_empty_and_fully_covered_masks() -> None:
    labels = np.zeros((40, 50), dtype=np.uint16)
    labels[0:10, 0:10] = 3
    empty = PromptMask(np.zeros((0, 0), dtype=bool), 0, 0, 0.1, labels.shape)
    blank = PromptMask(np.zeros((5, 5), dtype=bool), 20, 20, 0.1, labels.shape)
    covered = prompt_mask(labels.shape, 2, 2, 8, 8)
    new = prompt_mask(labels.shape, 30, 30, 35, 35)
    ids = paint_masks(labels, [empty, blank, covered, new, covered])
    assert ids == [None, None, None, 4, None]  # one id, none wasted on skipped masks
    assert (labels[30:35, 30:35] == 4).all()
    assert labels.dtype == np.uint16


def test_paint_masks_overlapping_new_masks_and_start_id() -> None:
    labels = np.zeros((30, 30), dtype=np.int32)
    ids = paint_masks(
        labels,
        [prompt_mask(labels.shape, 0, 0, 10, 10), prompt_mask(labels.shape, 5, 5, 15, 15)],
        start_id=10,
    )
    assert ids == [10, 11]
    assert (labels[0:10, 0:10] == 10).all()  # the first object keeps its overlap
    assert labels[12, 12] == 11 and labels[7, 12] == 11


def test_next_free_id() -> None:
    assert FIRST_CELL_ID == 2
    assert next_free_id(np.zeros((4, 4), dtype=np.int32)) == 2
    assert next_free_id(np.ones((4, 4), dtype=np.int32)) == 2
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, 0] = 41
    assert next_free_id(labels) == 42
    assert next_free_id(np.zeros((0, 0), dtype=np.int32)) == 2


def test_write_objects_csv(tmp_path: Path) -> None:
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[2:10, 3:7] = 2
    labels[20:30, 20:45] = 5
    labels[35:38, 0:2] = 9
    path = tmp_path / "objects.csv"
    rows = write_objects_csv(path, labels, {2: 0.91234, 9: 0.5})
    assert rows == 3
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3
    assert list(table[0]) == [
        "id", "centroid_y", "centroid_x", "area",
        "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "score",
    ]  # fmt: skip
    by_id = {int(r["id"]): r for r in table}
    assert set(by_id) == {2, 5, 9}
    assert int(by_id[2]["area"]) == 32
    assert [int(by_id[2][k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == [
        2, 3, 10, 7,
    ]  # fmt: skip
    assert float(by_id[5]["centroid_y"]) == pytest.approx(24.5)
    assert float(by_id[5]["centroid_x"]) == pytest.approx(32.0)
    assert by_id[2]["score"] == "0.9123"
    assert by_id[5]["score"] == ""
    assert write_objects_csv(tmp_path / "none.csv", np.zeros((5, 5), np.int32)) == 0


def test_write_objects_csv_of_a_sparse_annotation(tmp_path: Path) -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[:5] = 1  # background strokes
    labels[10:14, 10:14] = 2
    path = tmp_path / "objects.csv"
    assert write_objects_csv(tmp_path / "plain.csv", labels) == 2
    assert write_objects_csv(path, labels, background_id=1) == 1
    with open(path, newline="") as handle:
        assert [int(r["id"]) for r in csv.DictReader(handle)] == [2]


# -- samples --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x,y,w,h\n1,2,3,4\n", "x0,y0,x1,y1"),
        ("x0,y0,x1\n1,2,3\n", "x0,y0,x1,y1"),
        ("1,2,3,4\n5,6,7,8\n", "x0,y0,x1,y1"),  # no header
        ("", "x0,y0,x1,y1"),
        ("x0,y0,x1,y1\n", "no boxes"),
        ("x0,y0,x1,y1\n1,2,three,4\n", "four numbers"),
        ("x0,y0,x1,y1\n1,2,3\n", "four numbers"),
    ],
)
def test_read_boxes_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(BadInputError, match=match) as info:
        read_boxes(path)
    assert str(path) in str(info.value)


def test_read_boxes_by_column_name(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("note,y1,x1,y0,x0\na,40,30,20,10.5\nb,4,3,2,1\n")
    boxes = read_boxes(path)
    assert boxes.dtype == np.float64
    assert boxes.tolist() == [[10.5, 20, 30, 40], [1, 2, 3, 4]]


def test_shipped_boxes_file_is_the_top_level_one() -> None:
    shipped = sample_file("nuclei_boxes.csv")
    assert shipped.is_file()
    assert shipped.read_bytes() == (REPO / "sample_data" / "nuclei_boxes.csv").read_bytes()


def test_each_sample_box_surrounds_one_whole_object() -> None:
    sample = load_sample("nuclei")
    assert sample.image.shape == sample.labels.shape == (512, 512)
    assert sample.image.dtype == np.uint16 and sample.labels.dtype == np.int32
    boxes = read_boxes(REPO / "sample_data" / "nuclei_boxes.csv")
    assert np.array_equal(sample.boxes, boxes)
    assert len(boxes) == 12
    bboxes = {r.label: r.bbox for r in regionprops(sample.labels)}
    seen = set()
    for x0, y0, x1, y1 in boxes:
        whole = [
            label
            for label, (by0, bx0, by1, bx1) in bboxes.items()
            if by0 >= y0 and bx0 >= x0 and by1 <= y1 and bx1 <= x1
        ]
        assert len(whole) == 1, (x0, y0, x1, y1, whole)
        by0, bx0, by1, bx1 = bboxes[whole[0]]
        # a snug box: a few pixels of margin at most on every side
        assert max(by0 - y0, bx0 - x0, y1 - by1, x1 - bx1) <= 5
        seen.add(whole[0])
    assert len(seen) == len(boxes)  # one object per box, all different


def test_sample_corners_for_napari() -> None:
    sample = load_sample("nuclei")
    corners = sample.boxes_yx_corners()
    assert len(corners) == len(sample.boxes)
    x0, y0, x1, y1 = sample.boxes[0]
    assert corners[0].tolist() == [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]


def test_unknown_sample() -> None:
    with pytest.raises(BadInputError, match="nuclei"):
        load_sample("cells")


def test_generated_sample_layers() -> None:
    from napari_cellsparse._napari.sample_data import generated_nuclei

    layers = generated_nuclei()
    (image, image_meta, image_kind), (sparse, sparse_meta, sparse_kind) = layers[:2]
    shapes, shapes_meta, shapes_kind = layers[2]
    assert image_kind == "image" and shapes_kind == "shapes" and sparse_kind == "labels"
    assert image.shape == (512, 512) == sparse.shape
    assert "from ground truth" in sparse_meta["name"]
    assert set(np.unique(sparse)) >= {0, 1, 2} and len(np.unique(sparse[sparse >= 2])) == 8
    assert len(shapes) == 12 and shapes_meta["shape_type"] == "rectangle"
    assert "nuclei" in image_meta["name"]


# -- generated nuclei -----------------------------------------------------------------------


def test_make_nuclei_is_deterministic_per_seed() -> None:
    a_image, a_labels = make_nuclei(shape=(80, 100), n_objects=6, seed=5)
    b_image, b_labels = make_nuclei(shape=(80, 100), n_objects=6, seed=5)
    c_image, c_labels = make_nuclei(shape=(80, 100), n_objects=6, seed=6)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_labels, c_labels)
    assert not np.array_equal(a_image, c_image)


def test_make_nuclei_labels_are_separated_objects(nuclei) -> None:
    image, labels = nuclei
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert image.shape == labels.shape == (96, 128)
    ids = np.unique(labels)
    assert ids[0] == 0
    assert ids[1:].tolist() == list(range(1, len(ids)))  # 1..n, consecutive
    assert len(ids) - 1 == 8
    for label in ids[1:]:
        obj = labels == label
        _, parts = ndimage.label(obj)
        assert parts == 1  # one connected object
        near = ndimage.binary_dilation(obj, iterations=2)
        assert set(np.unique(labels[near])) <= {0, label}  # no other object within 2 px
    # objects are brighter than the background
    assert image[labels > 0].mean() > 1.5 * image[labels == 0].mean()


# -- devices --------------------------------------------------------------------------------


def has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


@pytest.mark.skipif(has_accelerator(), reason="this computer has CUDA or MPS")
def test_resolve_device_on_a_cpu_only_computer() -> None:
    from napari_cellsparse.core.devices import available_devices, resolve_device

    assert available_devices() == ["cpu"]
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    assert resolve_device("") == "cpu"
    assert resolve_device("cpu") == "cpu"
    for missing in ("cuda", "cuda:1", "mps", "tpu"):
        with pytest.raises(BadInputError, match="not available"):
            resolve_device(missing)


def test_available_devices_end_with_the_cpu() -> None:
    from napari_cellsparse.core.devices import available_devices

    assert available_devices()[-1] == "cpu"


# -- progress -------------------------------------------------------------------------------


def counting(n: int, closed: list[bool]) -> Generator[Progress, None, int]:
    try:
        for i in range(1, n + 1):
            yield Progress(i, n, "counting")
        return n * 10
    finally:
        closed.append(True)


def test_run_sync_returns_the_value_and_reports_every_event() -> None:
    events: list[Progress] = []
    closed: list[bool] = []
    assert run_sync(counting(3, closed), progress=events.append) == 30
    assert [(e.step, e.total, e.message) for e in events] == [
        (1, 3, "counting"),
        (2, 3, "counting"),
        (3, 3, "counting"),
    ]
    assert closed == [True]
    assert run_sync(counting(0, [])) == 0  # no events at all


def test_run_sync_cancel_closes_the_generator() -> None:
    cancel = threading.Event()
    events: list[Progress] = []
    closed: list[bool] = []

    def on_progress(event: Progress) -> None:
        events.append(event)
        if event.step == 2:
            cancel.set()

    with pytest.raises(CancelledError):
        run_sync(counting(5, closed), progress=on_progress, cancel=cancel)
    assert [e.step for e in events] == [1, 2]
    assert closed == [True]  # the generator could clean up


def test_check_cancel() -> None:
    check_cancel(None)
    event = threading.Event()
    check_cancel(event)
    event.set()
    with pytest.raises(CancelledError):
        check_cancel(event)


def test_engine_errors_are_also_builtin_errors() -> None:
    from napari_cellsparse.core.errors import BackendUnavailableError, CellsparseError

    assert issubclass(BadInputError, ValueError) and issubclass(BadInputError, CellsparseError)
    err = BackendUnavailableError("StarDist", "stardist", ImportError("no module"))
    assert isinstance(err, ImportError)
    assert 'pip install "napari-cellsparse[stardist]"' in str(err)
    assert err.extra == "stardist"


@pytest.mark.parametrize("total", [3, 4, 10, 37, 256])
def test_the_one_cycle_rate_outside_torch_is_torchs(total: int) -> None:
    """StarDist's Keras optimiser follows the rate torch's models train with, step by step."""
    from napari_cellsparse.core.lazy import import_torch
    from napari_cellsparse.models.schedule import one_cycle, one_cycle_rate

    torch = import_torch()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = one_cycle(torch, optimizer, 1e-3, total, 0.1)
    for step in range(total):
        assert one_cycle_rate(step, total, 1e-3, 0.1) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-9
        )
        optimizer.step()
        if step < total - 1:
            schedule.step()


def test_specks_do_not_outvote_the_cells_in_the_diameter_estimate() -> None:
    from napari_cellsparse.core.images import normalize
    from napari_cellsparse.models.scale import equivalent_diameters, foreground_diameter

    image, labels = make_nuclei((256, 256), n_objects=20, radius=(8.0, 10.0), seed=3)
    true = float(np.median(equivalent_diameters(labels)))
    rng = np.random.default_rng(0)
    specked = image.astype(np.float32).copy()
    bright = float(np.percentile(image[labels > 0], 75))
    free = np.argwhere(ndimage.binary_dilation(labels > 0, iterations=4) == 0)
    for y, x in free[rng.choice(len(free), 60, replace=False)]:  # texture: 3 flecks a cell
        specked[y : y + 5, x : x + 5] = bright
    estimate = foreground_diameter(normalize(as_yxc(specked)))
    assert estimate is not None
    assert 0.75 * true <= estimate <= 1.25 * true


@pytest.mark.parametrize(
    ("steps", "tail", "written"),
    [(4, 0.5, [3.5]), (4, 1.0, [2.5]), (4, 0.0, []), (10, 0.3, [9.0])],
)
def test_weight_average_writes_the_mean_of_the_last_steps_once(steps, tail, written) -> None:
    """After each step the weights equal the step number (1, 2, ...); the mean of the last
    ``tail`` share is written once, after the last step, and does not alias the weights."""
    from napari_cellsparse.models.weight_average import WeightAverage

    weights = {"w": np.zeros(3)}
    writes: list[float] = []

    def write(mean: dict) -> None:
        assert mean["w"] is not weights["w"]
        writes.append(float(mean["w"][0]))

    average = WeightAverage(lambda: dict(weights), write, steps, tail)
    for step in range(steps):
        weights["w"] += 1.0
        average.after_step(step)
    assert writes == written
