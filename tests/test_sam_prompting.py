"""SamPrompter against the reference ``mobile_sam.SamPredictor`` on the same model.

The model has random weights (no download here), which is enough to compare two
implementations of the same maths: the masks are not cells, but every logit must agree.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage.measure import regionprops

from napari_cellsparse.core.errors import BadInputError, CancelledError, WeightsError
from napari_cellsparse.core.images import to_rgb_uint8
from napari_cellsparse.core.progress import Progress, run_sync
from napari_cellsparse.sam.embedding import EmbeddingCache, ImageEmbedding, image_signature
from napari_cellsparse.sam.prompting import SamPrompter, check_boxes
from napari_cellsparse.samples.generated import make_nuclei

TOL = 1e-3
AGREEMENT = 0.9999


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.mean(a == b))


def make_rgb_portrait() -> tuple[np.ndarray, np.ndarray]:
    """A non-square (portrait) uint8 RGB picture with structure in every channel."""
    shape = (300, 200)
    red, labels = make_nuclei(shape=shape, n_objects=10, seed=11)
    green, _ = make_nuclei(shape=shape, n_objects=10, seed=12)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    channels = [red.astype(float), green.astype(float), (yy * 0.7 + xx * 0.3)]
    rgb = np.stack([255 * (c - c.min()) / (c.max() - c.min()) for c in channels], axis=-1)
    return rgb.astype(np.uint8), labels


@dataclass
class Case:
    image: np.ndarray
    rgb: np.ndarray
    boxes: np.ndarray  # N x 4, x0 y0 x1 y1
    prompter: SamPrompter
    predictor: Any  # mobile_sam.SamPredictor with the same image
    _boxes_done: dict = field(default_factory=dict)

    def reference_box(self, i: int, multimask: bool) -> tuple[np.ndarray, ...]:
        """The reference's (masks, iou, low-res logits) for box ``i`` (computed once)."""
        key = (i, multimask)
        if key not in self._boxes_done:
            self._boxes_done[key] = self.predictor.predict(
                box=self.boxes[i], multimask_output=multimask
            )
        return self._boxes_done[key]


def boxes_around_objects(labels: np.ndarray, count: int = 3, margin: int = 3) -> np.ndarray:
    h, w = labels.shape
    boxes = []
    for region in regionprops(labels)[:count]:
        y0, x0, y1, x1 = region.bbox
        boxes.append(
            [max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, w), min(y1 + margin, h)]
        )
    boxes.append([w * 0.1, h * 0.2, w * 0.6, h * 0.7])  # a large box, fractional corners
    return np.asarray(boxes, dtype=np.float64)


def make_case(kind: str, model) -> Case:
    from mobile_sam import SamPredictor

    if kind == "nuclei":
        image, labels = make_nuclei(shape=(256, 320), n_objects=12, seed=3)
    else:
        image, labels = make_rgb_portrait()
    rgb = to_rgb_uint8(image)
    if image.dtype == np.uint8:
        assert np.array_equal(rgb, image)  # an RGB picture is kept as it is
    prompter = SamPrompter(model, "test-model")
    run_sync(prompter.set_image(image))
    predictor = SamPredictor(model)
    predictor.set_image(rgb, image_format="RGB")
    return Case(image, rgb, boxes_around_objects(labels), prompter, predictor)


@pytest.fixture(scope="module")
def cases(vit_t_model):
    """Cases made on first use and kept for the module (each runs the encoder twice)."""
    made: dict[str, Case] = {}

    def get(kind: str) -> Case:
        if kind not in made:
            made[kind] = make_case(kind, vit_t_model)
        return made[kind]

    return get


@pytest.fixture(params=["nuclei", "rgb"], ids=["nuclei-uint16-landscape", "rgb-uint8-portrait"])
def case(request: pytest.FixtureRequest, cases) -> Case:
    """Both images: a uint16 landscape one and a uint8 RGB portrait one."""
    return cases(request.param)


@pytest.fixture
def nuclei_case(cases) -> Case:
    return cases("nuclei")


# -- equivalence with the reference ---------------------------------------------------------


def test_embedding_matches_the_reference(case: Case) -> None:
    emb = case.prompter.embedding
    assert emb is not None
    assert emb.original_size == case.image.shape[:2]
    assert emb.input_size == case.predictor.input_size
    assert tuple(emb.features.shape) == (1, 256, 64, 64)
    assert torch.allclose(emb.features, case.predictor.features, atol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_box_logits_and_iou_match_the_reference(case: Case, multimask: bool) -> None:
    logits, ious = case.prompter.decode_boxes(case.boxes, multimask)
    m = 3 if multimask else 1
    assert tuple(logits.shape) == (len(case.boxes), m, 256, 256)
    assert tuple(ious.shape) == (len(case.boxes), m)
    for i in range(len(case.boxes)):
        _, ref_iou, ref_low = case.reference_box(i, multimask)
        assert np.abs(logits[i].numpy() - ref_low).max() <= TOL
        assert np.abs(ious[i].numpy() - ref_iou).max() <= TOL


@pytest.mark.parametrize("multimask", [False, True])
def test_box_masks_match_the_reference(case: Case, multimask: bool) -> None:
    masks = case.prompter.boxes(case.boxes, multimask=multimask)
    assert len(masks) == len(case.boxes)
    nontrivial = 0
    for i, mask in enumerate(masks):
        ref_masks, ref_iou, _ = case.reference_box(i, multimask)
        best = int(np.argmax(ref_iou))
        ref = ref_masks[best]
        full = mask.full()
        assert full.shape == case.image.shape[:2]
        assert agreement(full, ref) >= AGREEMENT
        assert abs(mask.score - float(ref_iou[best])) <= TOL
        assert mask.area == int(full.sum())
        nontrivial += 0 < ref.mean() < 1
    assert nontrivial > 0  # the comparison is not between empty (or full) masks


def test_boxes_in_a_batch_equal_boxes_one_by_one(nuclei_case: Case, vit_t_model) -> None:
    batched = SamPrompter(vit_t_model, "test-model", batch_size=3)
    batched.use_embedding(nuclei_case.prompter.embedding)
    one_logits, one_iou = nuclei_case.prompter.decode_boxes(nuclei_case.boxes, True)
    many_logits, many_iou = batched.decode_boxes(nuclei_case.boxes, True)
    assert torch.allclose(one_logits, many_logits, atol=1e-4)
    assert torch.allclose(one_iou, many_iou, atol=1e-5)


def random_points(case: Case, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = case.image.shape[:2]
    rng = np.random.default_rng(seed)
    points = rng.uniform([0, 0], [w - 1, h - 1], size=(count, 2))
    labels = (np.arange(count) % 3 != 1).astype(int)  # mostly positive, some negative
    return points, labels


def check_points(case: Case, points, labels, multimask: bool, box=None) -> None:
    ours = case.prompter.points(points, labels, box=box, multimask=multimask)
    ref_masks, ref_iou, _ = case.predictor.predict(
        point_coords=np.asarray(points, dtype=float),
        point_labels=np.asarray(labels),
        box=None if box is None else np.asarray(box, dtype=float),
        multimask_output=multimask,
    )
    best = int(np.argmax(ref_iou))
    assert agreement(ours.full(), ref_masks[best]) >= AGREEMENT
    assert abs(ours.score - float(ref_iou[best])) <= TOL
    assert ours.score == pytest.approx(float(np.max(ref_iou)), abs=TOL)


@pytest.mark.parametrize("multimask", [True, False])
def test_positive_and_negative_points_match_the_reference(case: Case, multimask: bool) -> None:
    x0, y0, x1, y1 = case.boxes[0]
    inside = [(x0 + x1) / 2, (y0 + y1) / 2]
    outside = [x1 + 5, y1 + 5]
    check_points(case, [inside, outside], [1, 0], multimask)


# 9 points: 15 tokens x 8 heads < 128 (low-rank attention); 10 or more: the standard form.
@pytest.mark.parametrize("count", [9, 10, 20])
def test_many_points_match_the_reference(case: Case, count: int) -> None:
    points, labels = random_points(case, count, seed=count)
    labels[0] = 1
    check_points(case, points, labels, multimask=True)


def test_points_with_a_box_match_the_reference(case: Case) -> None:
    x0, y0, x1, y1 = case.boxes[1]
    check_points(case, [[(x0 + x1) / 2, (y0 + y1) / 2]], [1], True, box=case.boxes[1])
    # only a negative point is fine when a box says where the object is
    check_points(case, [[x0 + 1, y0 + 1]], [0], False, box=case.boxes[1])


def test_reversed_and_clipped_boxes_give_the_same_masks(nuclei_case: Case) -> None:
    h, w = nuclei_case.image.shape[:2]
    box = np.array([w - 40.0, h - 50.0, w, h])
    spilling = np.array([w + 30.0, h + 20.0, w - 40.0, h - 50.0])  # reversed, partly outside
    masks = nuclei_case.prompter.boxes([box, spilling])
    assert np.array_equal(masks[0].full(), masks[1].full())
    assert masks[0].score == masks[1].score


# -- the embedding cache --------------------------------------------------------------------


def test_second_set_image_is_a_cache_hit(vit_t_model, encoder_calls: list[int]) -> None:
    first, _ = make_nuclei(shape=(96, 128), n_objects=5, seed=21)
    second, _ = make_nuclei(shape=(96, 128), n_objects=5, seed=22)
    image = np.stack([first, second], axis=-1)  # two channels: two RGB images to embed
    prompter = SamPrompter(vit_t_model, "cache-test")
    events: list[Progress] = []
    computed = run_sync(prompter.set_image(image, channels=[0]), progress=events.append)
    assert len(encoder_calls) == 1
    assert events and events[-1].step == events[-1].total
    box = np.array([10, 10, 60, 50])
    logits_0, _ = prompter.decode_boxes(box)

    events.clear()
    again = run_sync(prompter.set_image(image.copy(), channels=(0,)), progress=events.append)
    assert len(encoder_calls) == 1  # no encoder run
    assert events == []
    assert torch.equal(again.features, computed.features)
    assert again.signature == computed.signature

    # With ``cancel`` already set, a hit returns the embedding; a miss stops at the encoder.
    stop = threading.Event()
    stop.set()
    assert run_sync(prompter.set_image(image, channels=[0]), cancel=stop) is computed
    for miss, channels in [(second, None), (image, [0, 1]), (image, None)]:
        with pytest.raises(CancelledError):
            run_sync(prompter.set_image(miss, channels=channels), cancel=stop)
    assert len(encoder_calls) == 1
    assert prompter.embedding is computed  # a cancelled image changes nothing

    other = run_sync(prompter.set_image(image, channels=[1]))
    assert len(encoder_calls) == 2  # another channel is another image: a miss
    assert other.signature != computed.signature
    assert not torch.equal(other.features, computed.features)
    logits_1, _ = prompter.decode_boxes(box)
    assert not torch.allclose(logits_0, logits_1)

    run_sync(prompter.set_image(image, channels=[0]))  # back to the first: still cached
    assert len(encoder_calls) == 2
    assert prompter.embedding.signature == computed.signature
    assert torch.equal(prompter.decode_boxes(box)[0], logits_0)
    assert len(prompter.cache) == 2


def fake_embedding(signature: str) -> ImageEmbedding:
    return ImageEmbedding(torch.randn(1, 256, 64, 64), (100, 120), (853, 1024), signature)


def test_lru_bound_evicts_the_least_recently_used() -> None:
    cache = EmbeddingCache(max_items=2)
    a, b, c = (fake_embedding(s) for s in "abc")
    cache.put(a)
    cache.put(b)
    assert list(cache) == ["a", "b"]
    cache.put(c)
    assert list(cache) == ["b", "c"]
    assert cache.get("a") is None
    assert cache.get("b") is b  # b is now the most recent
    cache.put(a)
    assert list(cache) == ["b", "a"]
    assert cache.get("c") is None
    cache.clear()
    assert len(cache) == 0


def test_disk_cache_is_found_by_a_new_prompter(
    tmp_path: Path, vit_t_model, encoder_calls: list[int]
) -> None:
    image, _ = make_nuclei(shape=(80, 100), n_objects=4, seed=31)
    box = np.array([5, 5, 60, 50])
    disk = tmp_path / "embeddings"
    first = SamPrompter(vit_t_model, "disk-test", EmbeddingCache(disk_dir=disk))
    emb = run_sync(first.set_image(image))
    assert len(encoder_calls) == 1
    assert sorted(p.name for p in disk.iterdir()) == [f"{emb.signature}.pt"]
    logits, ious = first.decode_boxes(box, True)

    second = SamPrompter(vit_t_model, "disk-test", EmbeddingCache(disk_dir=disk))
    loaded = run_sync(second.set_image(image))
    assert len(encoder_calls) == 1  # from disk, no encoder run
    assert loaded.signature == emb.signature
    assert loaded.original_size == emb.original_size
    assert loaded.input_size == emb.input_size
    assert torch.equal(loaded.features, emb.features)
    logits2, ious2 = second.decode_boxes(box, True)
    assert torch.equal(logits, logits2)
    assert torch.equal(ious, ious2)
    # The same image embedded by another model is another entry. With ``cancel`` already
    # set, a hit returns the embedding while a miss stops as the encoder starts.
    stop = threading.Event()
    stop.set()
    same = SamPrompter(vit_t_model, "disk-test", EmbeddingCache(disk_dir=disk))
    assert run_sync(same.set_image(image), cancel=stop).signature == emb.signature
    other = SamPrompter(vit_t_model, "another-model", EmbeddingCache(disk_dir=disk))
    with pytest.raises(CancelledError):
        run_sync(other.set_image(image), cancel=stop)
    assert len(encoder_calls) == 1


def test_corrupted_disk_cache_file_is_recomputed(
    tmp_path: Path, vit_t_model, nuclei_case: Case, encoder_calls: list[int]
) -> None:
    disk = tmp_path / "embeddings"
    emb = nuclei_case.prompter.embedding
    EmbeddingCache(disk_dir=disk).put(emb)  # as if computed in an earlier session
    path = disk / f"{emb.signature}.pt"
    assert [p.name for p in disk.iterdir()] == [path.name]
    good = SamPrompter(vit_t_model, "test-model", EmbeddingCache(disk_dir=disk))
    run_sync(good.set_image(nuclei_case.image))
    assert encoder_calls == []  # the good file is used

    path.write_bytes(b"\x00garbage" * 100)
    fresh = SamPrompter(vit_t_model, "test-model", EmbeddingCache(disk_dir=disk))
    again = run_sync(fresh.set_image(nuclei_case.image))  # no exception
    assert len(encoder_calls) == 1  # recomputed
    assert again.signature == emb.signature
    assert torch.allclose(again.features, emb.features, atol=1e-6)
    # the file was replaced by a good one
    later = SamPrompter(vit_t_model, "test-model", EmbeddingCache(disk_dir=disk))
    run_sync(later.set_image(nuclei_case.image))
    assert len(encoder_calls) == 1
    assert [p.name for p in disk.iterdir()] == [path.name]


def test_disk_cache_file_of_another_image_is_not_used(tmp_path: Path) -> None:
    disk = tmp_path / "embeddings"
    cache = EmbeddingCache(disk_dir=disk)
    cache.put(fake_embedding("aaaa"))
    (disk / "aaaa.pt").rename(disk / "bbbb.pt")  # a file under the wrong name
    assert EmbeddingCache(disk_dir=disk).get("bbbb") is None
    assert not (disk / "bbbb.pt").exists()


def test_image_signature() -> None:
    rgb = to_rgb_uint8(make_nuclei(shape=(64, 64), n_objects=3)[0])
    base = image_signature(rgb, "m1")
    assert image_signature(rgb.copy(), "m1") == base
    assert image_signature(rgb, "m2") != base
    changed = rgb.copy()
    changed[10, 10, 0] ^= 1
    assert image_signature(changed, "m1") != base
    assert image_signature(np.ascontiguousarray(rgb[:, :32]), "m1") != base


def test_cancelled_embedding_caches_nothing(
    tmp_path: Path, vit_t_model, encoder_calls: list[int]
) -> None:
    image, _ = make_nuclei(shape=(64, 80), n_objects=3, seed=41)
    disk = tmp_path / "embeddings"
    prompter = SamPrompter(vit_t_model, "cancel-test", EmbeddingCache(disk_dir=disk))
    cancel = threading.Event()
    events: list[Progress] = []

    def on_progress(event: Progress) -> None:
        events.append(event)
        cancel.set()

    with pytest.raises(CancelledError):
        run_sync(prompter.set_image(image), progress=on_progress, cancel=cancel)
    assert len(events) == 1
    assert events[0].total > 3  # one step per encoder stage
    assert encoder_calls == []  # stopped before the encoder's first stage
    assert len(prompter.cache) == 0
    assert prompter.embedding is None
    assert not disk.exists() or list(disk.iterdir()) == []
    with pytest.raises(BadInputError, match="No image"):
        prompter.boxes([[1, 1, 20, 20]])


# -- loading --------------------------------------------------------------------------------


def test_load_with_a_weights_file(vit_t_checkpoint: Path, nuclei_case: Case) -> None:
    prompter = SamPrompter.load("vit_t", weights=vit_t_checkpoint, device="cpu")
    assert str(prompter.device) == "cpu"
    assert prompter.batch_size == 1
    assert prompter.model_key.startswith("vit_t|")
    assert str(vit_t_checkpoint.resolve()) in prompter.model_key
    prompter.use_embedding(nuclei_case.prompter.embedding)
    ours = prompter.decode_boxes(nuclei_case.boxes[:2], True)
    shared = nuclei_case.prompter.decode_boxes(nuclei_case.boxes[:2], True)
    assert torch.equal(ours[0], shared[0])
    assert torch.equal(ours[1], shared[1])


def test_load_without_weights_names_the_file() -> None:
    with pytest.raises(WeightsError, match=r"mobile_sam\.pt"):
        SamPrompter.load("vit_t", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this computer has CUDA")
def test_load_on_a_missing_device(vit_t_checkpoint: Path) -> None:
    with pytest.raises(BadInputError, match="cuda"):
        SamPrompter.load("vit_t", weights=vit_t_checkpoint, device="cuda")


# -- bad input ------------------------------------------------------------------------------


def test_check_boxes_accepts_reversed_corners_and_clips() -> None:
    shape = (100, 80)  # H, W
    out = check_boxes([[50, 60, 10, 20]], shape)
    assert out.tolist() == [[10, 20, 50, 60]]
    out = check_boxes([[-10, -5, 50, 40], [70, 90, 120, 130.5]], shape)
    assert out.tolist() == [[0, 0, 50, 40], [70, 90, 80, 100]]
    out = check_boxes(np.array([1, 2, 3.5, 4.5]), shape)  # one box as a flat array
    assert out.shape == (1, 4)


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        ([[10, 10, 11, 30]], "too small"),  # 1 pixel wide
        ([[10, 10, 30, 10.5]], "too small"),  # half a pixel high
        ([[-20, 10, 1, 30]], "too small"),  # 1 pixel wide once clipped
        ([[90, 10, 120, 30]], "outside"),  # right of the image (W = 80)
        ([[-30, -30, -1, -1]], "outside"),
        ([[10, 100, 30, 140]], "outside"),  # starts at the bottom edge (H = 100)
        ([[10, 10, 30, 30], [10, 10, 30, 30], [0, 0, 0, 0]], "Box 3"),
        ([[10, np.nan, 30, 30]], "finite"),
        ([[10, 10, np.inf, 30]], "finite"),
        ([10, 10, 30], "N x 4"),
        ([[10, 10, 30, 30, 1]], "N x 4"),
        (np.zeros((2, 2, 2)), "N x 4"),
    ],
)
def test_check_boxes_rejects(boxes, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        check_boxes(boxes, (100, 80))


def test_prompter_rejects_bad_boxes(nuclei_case: Case) -> None:
    w = nuclei_case.image.shape[1]
    with pytest.raises(BadInputError):
        nuclei_case.prompter.boxes([[w + 1, 0, w + 50, 40]])
    with pytest.raises(BadInputError):
        nuclei_case.prompter.boxes([[5, 5, 6, 40]])


def test_no_boxes(nuclei_case: Case) -> None:
    assert nuclei_case.prompter.boxes(np.zeros((0, 4))) == []
    assert nuclei_case.prompter.boxes([]) == []


def test_decode_no_boxes(nuclei_case: Case) -> None:
    logits, ious = nuclei_case.prompter.decode_boxes(np.zeros((0, 4)), True)
    assert tuple(logits.shape) == (0, 3, 256, 256)
    assert tuple(ious.shape) == (0, 3)


def test_prompter_rejects_nan_points(nuclei_case: Case) -> None:
    with pytest.raises(BadInputError):
        nuclei_case.prompter.points([[np.nan, 10.0]], [1])


def test_prompter_rejects_bad_points(nuclei_case: Case) -> None:
    h, w = nuclei_case.image.shape[:2]
    p = nuclei_case.prompter
    with pytest.raises(BadInputError, match="outside"):
        p.points([[w, 10]], [1])
    with pytest.raises(BadInputError, match="outside"):
        p.points([[10, -1]], [1])
    with pytest.raises(BadInputError, match="positive"):
        p.points([[10, 10], [20, 20]], [0, 0])
    with pytest.raises(BadInputError, match="label"):
        p.points([[10, 10]], [2])
    with pytest.raises(BadInputError):
        p.points([[10, 10], [20, 20]], [1])
    with pytest.raises(BadInputError):
        p.points(np.zeros((0, 2)), [])
    # the last valid pixel is inside
    assert p.points([[w - 0.5, h - 0.5]], [1]).shape == (h, w)


def test_prompts_without_an_image(vit_t_model) -> None:
    prompter = SamPrompter(vit_t_model, "no-image")
    with pytest.raises(BadInputError, match="No image"):
        prompter.boxes([[1, 1, 20, 20]])
    with pytest.raises(BadInputError, match="No image"):
        prompter.points([[5, 5]], [1])
    with pytest.raises(BadInputError, match="No image"):
        prompter.decode_boxes(np.array([[1, 1, 20, 20]]))


def test_set_image_rejects_bad_images(vit_t_model) -> None:
    prompter = SamPrompter(vit_t_model, "bad-image")
    with pytest.raises(BadInputError):
        prompter.set_image_sync(np.zeros((4, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(BadInputError):
        prompter.set_image_sync(np.full((32, 32), np.nan, dtype=np.float32))
    assert prompter.embedding is None
    assert len(prompter.cache) == 0
