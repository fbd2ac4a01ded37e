"""Automatic masks: same parameters and objects as segment-anything's generator.

Random SAM weights decode noise, so the object-level comparisons decode with a
:class:`LabelOracle` on both sides (a deterministic point -> logits function from a label
image); everything after the decoder runs for real on both sides. The real decoder is
compared end to end with thresholds that let its noise masks through.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from segment_anything import SamAutomaticMaskGenerator

from napari_cellsparse._testing import LabelOracle, OracleDecoder, oracle_predict_torch
from napari_cellsparse.core.errors import BadInputError, CancelledError
from napari_cellsparse.core.images import to_rgb_uint8
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.sam.automask import (
    AutoMask,
    AutomaskGenerator,
    AutomaskParams,
    AutomaskResult,
    generate_masks,
)
from napari_cellsparse.sam.prompting import SamPrompter
from napari_cellsparse.samples.generated import make_nuclei


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return make_nuclei((256, 256), n_objects=45, radius=(6.0, 10.0), seed=3)


def _reference(model, image, labels, **params):
    generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **params)
    generator.predictor.predict_torch = oracle_predict_torch(
        generator.predictor, LabelOracle(labels)
    )
    return generator.generate(to_rgb_uint8(image))


def _ours(model, image, labels, batch_size=1, **params):
    prompter = SamPrompter(model, "test", batch_size=batch_size)
    prompter.decoder = OracleDecoder(prompter.decoder, LabelOracle(labels))
    return run_sync(generate_masks(prompter, image, params))


def _summary(records):
    return sorted(
        (tuple(r["bbox"]), r["area"], round(r["predicted_iou"], 4), round(r["stability_score"], 3))
        for r in records
    )


def test_parameters_and_defaults_are_the_reference_generators() -> None:
    reference = inspect.signature(SamAutomaticMaskGenerator).parameters
    ours = AutomaskParams().as_dict()
    for name, value in ours.items():
        assert reference[name].default == pytest.approx(value), name
    assert set(ours) == set(reference) - {"model", "point_grids", "output_mode"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"stability_score_thresh": float("nan")}, "stability_score_thresh"),
        ({"crop_n_layers": 1.5}, "whole number"),
        ({"box_nms_thresh": "high"}, "must be a number"),
        (
            {"crop_n_layers": 3, "points_per_side": 4, "crop_n_points_downscale_factor": 2},
            "deepest",
        ),
        ({"poinst_per_side": 8}, "Unknown automask parameter"),
    ],
)
def test_parameters_out_of_range_are_refused(values, message) -> None:
    with pytest.raises(BadInputError, match=message):
        AutomaskParams.from_dict(values)


@pytest.mark.parametrize(
    "params",
    [
        {"points_per_side": 16},
        {"points_per_side": 16, "crop_n_layers": 1},
        {"points_per_side": 16, "min_mask_region_area": 20},
    ],
    ids=["default", "crop1", "minarea20"],
)
def test_same_objects_as_the_reference(vit_t_model, nuclei, params) -> None:
    image, labels = nuclei
    reference = _reference(vit_t_model, image, labels, **params)
    result = _ours(vit_t_model, image, labels, **params)
    assert len(reference) >= 20
    assert _summary(result.records()) == _summary(reference)
    # Same pixels, not only the same boxes.
    ours = {tuple(m.record()["bbox"]): m.full() for m in result.masks}
    for r in reference:
        np.testing.assert_array_equal(ours[tuple(r["bbox"])], r["segmentation"])


def test_batched_decoding_gives_the_same_objects(vit_t_model, nuclei) -> None:
    image, labels = nuclei
    one = _ours(vit_t_model, image, labels, batch_size=1, points_per_side=12)
    many = _ours(vit_t_model, image, labels, batch_size=7, points_per_side=12)
    assert len(one) > 10
    assert _summary(one.records()) == _summary(many.records())


def test_real_decoder_matches_the_reference_end_to_end(vit_t_model, nuclei) -> None:
    """Random weights, thresholds off: the decoder's own masks go through both pipelines."""
    image, _ = nuclei
    params = {
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    generator = SamAutomaticMaskGenerator(vit_t_model, output_mode="binary_mask", **params)
    reference = generator.generate(to_rgb_uint8(image))
    result = run_sync(generate_masks(SamPrompter(vit_t_model, "test"), image, params))
    assert len(result) == len(reference) > 0
    ref = sorted(reference, key=lambda r: (r["point_coords"], r["predicted_iou"]))
    ours = sorted(result.masks, key=lambda m: ([list(m.point)], m.predicted_iou))
    for r, m in zip(ref, ours, strict=True):
        assert m.predicted_iou == pytest.approx(r["predicted_iou"], abs=1e-4)
        full = m.full()
        disagree = np.logical_xor(full, r["segmentation"]).sum()
        assert disagree <= 1e-3 * full.size


def test_the_cached_embedding_of_the_image_is_reused(vit_t_model, nuclei, monkeypatch) -> None:
    image, labels = nuclei
    prompter = SamPrompter(vit_t_model, "test")
    prompter.set_image_sync(image)
    prompter.decoder = OracleDecoder(prompter.decoder, LabelOracle(labels))

    def no_encoder(*args, **kwargs):
        raise AssertionError("the image encoder ran again")

    monkeypatch.setattr("napari_cellsparse.sam.prompting.compute_embedding", no_encoder)
    result = run_sync(generate_masks(prompter, image, {"points_per_side": 8}))
    assert len(result) > 0
    assert len(prompter.cache) == 1


def test_cancel_stops_at_the_next_batch_of_points(vit_t_model, nuclei) -> None:
    image, labels = nuclei
    oracle = LabelOracle(labels)
    calls: list[int] = []

    def counting(points):
        calls.append(len(points))
        return oracle(points)

    prompter = SamPrompter(vit_t_model, "test")
    prompter.decoder = OracleDecoder(prompter.decoder, counting)
    cancel = threading.Event()

    def on_progress(event):
        if event.message.startswith("Decoding"):
            cancel.set()

    work = generate_masks(
        prompter, image, {"points_per_side": 16, "points_per_batch": 32}, cancel=cancel
    )
    with pytest.raises(CancelledError):
        run_sync(work, progress=on_progress)
    assert sum(calls) == 32  # the first batch was decoded, the second never started


def _box(y0: int, x0: int, h: int, w: int, score: float) -> AutoMask:
    return AutoMask(np.ones((h, w), bool), y0, x0, score, (60, 60), 1.0, (x0, y0), (0, 0, 60, 60))


def test_labels_resolve_overlaps_by_score_and_drop_fragments() -> None:
    a = _box(0, 0, 20, 20, 0.90)
    b = _box(10, 10, 20, 20, 0.95)  # wins the overlap with `a`
    c = _box(12, 12, 6, 6, 0.89)  # entirely covered: dropped
    d = _box(40, 40, 20, 4, 0.80)  # cut in two by `e`: keeps its larger piece
    e = _box(44, 30, 2, 21, 0.99)
    labels = AutomaskResult([a, b, c, d, e], (60, 60), AutomaskParams()).labels()
    assert labels.dtype == np.int32
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    assert labels[5, 5] == 1 and (labels == 1).sum() == 400 - 100
    assert labels[15, 15] == 2 and (labels == 2).sum() == 400
    assert labels[50, 41] == 3 and (labels == 3).sum() == 14 * 4 and labels[41, 41] == 0
    assert labels[44, 35] == 4 and (labels == 4).sum() == 2 * 21


def _counting_prompter(model, calls: list[str]) -> SamPrompter:
    """A prompter on the real decoder that records each decoder call by name."""
    prompter = SamPrompter(model, "test")
    for name in ("embed_prompts", "decode_scores", "decode_masks"):
        original = getattr(prompter.decoder, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(prompter.decoder, name, counted)
    return prompter


@pytest.mark.parametrize("crop_n_layers", [0, 1], ids=["whole", "crop1"])
def test_threshold_changes_decode_nothing_and_match_a_fresh_run(
    vit_t_model, nuclei, crop_n_layers
) -> None:
    """Set-up decodes the grid once; new thresholds re-filter the kept candidates, giving the
    objects (same records, same pixels) of a fresh full run with those thresholds."""
    image, _ = nuclei
    calls: list[str] = []
    grid = {"points_per_side": 6, "crop_n_layers": crop_n_layers}
    generator = AutomaskGenerator(_counting_prompter(vit_t_model, calls), grid)
    run_sync(generator.initialize(image))
    decoded = len(calls)
    assert calls.count("decode_masks") > 0
    kept = [c for crop in generator.crops for c in crop.candidates]
    iou = np.median([c.iou for c in kept])
    stability = np.nanmedian([c.stability for c in kept])
    # Random weights decode image-sized noise masks: NMS off (1.0) keeps the filters visible.
    off = {"box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}
    settings = [
        {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, **off},
        {"pred_iou_thresh": iou, "stability_score_thresh": 0.0, **off},
        {"pred_iou_thresh": 0.0, "stability_score_thresh": stability, **off},
        {"pred_iou_thresh": iou, "stability_score_thresh": stability, "min_mask_region_area": 30},
    ]
    fresh_prompter = SamPrompter(vit_t_model, "test")  # its own decoder; embeddings cached
    counts = []
    for thresholds in settings:
        params = {**grid, **thresholds}
        result = generator.generate(params)
        assert len(calls) == decoded, "a threshold change ran the decoder"
        fresh = run_sync(generate_masks(fresh_prompter, image, params))
        assert _summary(result.records()) == _summary(fresh.records())
        for ours, theirs in zip(result.masks, fresh.masks, strict=True):
            np.testing.assert_array_equal(ours.full(), theirs.full())
        counts.append(len(result))
    assert counts[0] == len(kept) > counts[1] > 0  # the thresholds do filter
    assert len(set(counts)) > 2


def test_a_grid_change_or_a_threshold_under_the_floor_needs_a_new_set_up(
    vit_t_model, nuclei
) -> None:
    image, _ = nuclei
    calls: list[str] = []
    prompter = _counting_prompter(vit_t_model, calls)
    with pytest.raises(BadInputError, match="initialize"):
        AutomaskGenerator(prompter).generate()
    chosen = AutomaskParams(points_per_side=4, pred_iou_thresh=0.5)
    one_run = AutomaskGenerator(prompter, chosen, keep_all=False)
    run_sync(one_run.initialize(image))
    assert one_run.covers(replace(chosen, pred_iou_thresh=0.6, box_nms_thresh=0.2))
    for other in (
        replace(chosen, pred_iou_thresh=0.4),  # its candidates were never kept
        replace(chosen, points_per_side=5),
        replace(chosen, stability_score_offset=2.0),
    ):
        assert not one_run.covers(other)
        with pytest.raises(BadInputError, match="set-up again"):
            one_run.generate(other)


def test_the_kept_candidates_are_packed_windows(vit_t_model, nuclei) -> None:
    """Memory: one bit per pixel of each candidate's window, never a full image per point."""
    image, labels = nuclei
    prompter = SamPrompter(vit_t_model, "test")
    prompter.decoder = OracleDecoder(prompter.decoder, LabelOracle(labels))
    generator = AutomaskGenerator(prompter, {"points_per_side": 16})
    run_sync(generator.initialize(image))
    kept = [c for crop in generator.crops for c in crop.candidates]
    assert len(kept) > 100
    window_pixels = sum(c.window[0] * c.window[1] for c in kept)
    assert window_pixels < 0.5 * len(kept) * image.size  # objects' windows, not the image
    assert generator.nbytes < window_pixels / 8 + 64 * len(kept)
    objects = [c for c in kept if c.window != (0, 0)]  # points on background find nothing
    assert len(objects) > 50
    for c in objects[:20]:
        assert c.mask().sum() > 0 and c.bits.nbytes == -(-c.window[0] * c.window[1] // 8)
