"""Benchmark SAM box prompting: our SamPrompter against mobile_sam's SamPredictor, and the
SAM annotator in a real napari viewer.

Both sides use the very same vit_t model object with seeded random weights
(``torch.manual_seed(0)`` then ``build_sam("vit_t")``), on the CPU. Images are nuclei-like
(:func:`napari_cellsparse.samples.generated.make_nuclei`); boxes are the ground-truth objects'
bounding boxes padded by a few pixels. Prints ONE JSON object on stdout::

    {"1024": {...}, "2048": {...}, "viewer": {...}, "machine": {...}}

Per size: ``embed_s`` (our ``set_image``, fresh cache), ``cache_hit_ms`` (the same image
again), ``box_ms``/``ref_box_ms`` (one box, median), ``decoder_ms`` (the reference's bare
prompt encoder + mask decoder: its floor), ``boxes50_ms``/``ref_boxes50_ms`` (50 boxes in
one call / 50 ``predict`` calls), ``max_logit_diff`` (low-resolution logits and IoU
predictions), ``mask_agreement`` (full-resolution masks), ratios, and the goals:
``goal_box`` (box_ms <= 0.75 ref_box_ms), ``goal_boxes50`` (boxes50_ms <= 0.6
ref_boxes50_ms), ``goal_logits`` (max_logit_diff <= 1e-3), ``goal_agreement``
(mask_agreement >= 0.9999) and ``goal_cache`` (cache_hit_ms < 5). ``viewer``: box-to-painted
latency in napari and the longest event-loop stall while embedding (see its ``note``).

Everything else (progress, warnings) goes to stderr. Run from the repository root::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/sam_prompt.py
    .venv/bin/python benchmarks/sam_prompt.py --no-viewer          # no display needed
    xvfb-run -a -s "-screen 0 1600x1000x24" \
        .venv/bin/python benchmarks/sam_prompt.py --sizes 1024 --boxes 5   # quick check

The viewer part uses the largest size given to ``--sizes`` (2048 by default). The numeric
parts run first: torch and torchvision (through mobile_sam) must be imported before napari
creates an OpenGL context (see ``napari_cellsparse.core.lazy.guard_triton``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_cellsparse.core.images import to_rgb_uint8
from napari_cellsparse.core.lazy import import_mobile_sam, import_torch
from napari_cellsparse.core.masks import PromptMask
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.sam.embedding import EmbeddingCache
from napari_cellsparse.sam.models import build_sam
from napari_cellsparse.sam.prompting import SamPrompter
from napari_cellsparse.samples.generated import make_nuclei

N_BATCH = 50  # boxes in the many-boxes comparison
PAD = 4  # pixels added around a true object's bounding box
CACHE_REPEATS = 7
SEED = 0


def log(message: str) -> None:
    print(f"[sam_prompt] {message}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def median_ms(values: list[float]) -> float:
    return ms(statistics.median(values))


@dataclass
class TrueObject:
    """One ground-truth object: its padded box (x0, y0, x1, y1) and its mask in its bbox."""

    label: int
    box: np.ndarray
    y0: int
    x0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def true_objects(truth: np.ndarray, pad: int = PAD) -> list[TrueObject]:
    """The objects of a label image, in label order, with boxes padded by ``pad`` pixels."""
    h, w = truth.shape
    found = []
    for index, sl in enumerate(ndimage.find_objects(truth)):
        if sl is None:
            continue
        label = index + 1
        ys, xs = sl
        box = np.array(
            [
                max(xs.start - pad, 0),
                max(ys.start - pad, 0),
                min(xs.stop + pad, w),
                min(ys.stop + pad, h),
            ],
            dtype=np.float64,
        )
        found.append(TrueObject(label, box, ys.start, xs.start, truth[sl] == label))
    if not found:
        raise SystemExit("the synthetic image has no objects")
    return found


def cycle(objects: list[TrueObject], n: int) -> list[TrueObject]:
    """``n`` objects, cycling when there are fewer."""
    return [objects[i % len(objects)] for i in range(n)]


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# -- numbers: ours against the reference --------------------------------------------------


def bench_size(
    sam: Any, size: int, n_boxes: int, n_objects: int, warm_encoder: bool
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    torch = import_torch()
    predictor_cls = import_mobile_sam().SamPredictor
    key = f"vit_t|bench-seed{SEED}"

    log(f"{size}x{size}: generating {n_objects} nuclei")
    image, truth = make_nuclei(shape=(size, size), n_objects=n_objects, seed=SEED)
    objects = true_objects(truth)
    single = np.array([o.box for o in cycle(objects, n_boxes)])
    batch = np.array([o.box for o in cycle(objects, N_BATCH)])
    rgb = to_rgb_uint8(image)

    # -- embedding, cache hit
    if warm_encoder:
        log(f"{size}: warming up the encoder")
        SamPrompter(sam, key, EmbeddingCache()).set_image_sync(image)
    prompter = SamPrompter(sam, key, EmbeddingCache())
    embed_s, _ = timed(run_sync, prompter.set_image(image))
    log(f"{size}: our set_image (fresh cache) {embed_s:.2f} s")
    hits = [timed(run_sync, prompter.set_image(image))[0] for _ in range(CACHE_REPEATS)]

    predictor = predictor_cls(sam)
    ref_embed_s, _ = timed(predictor.set_image, rgb)
    log(f"{size}: reference set_image {ref_embed_s:.2f} s")
    assert prompter.embedding is not None
    embedding_diff = float((prompter.embedding.features - predictor.features).abs().max().item())

    # -- one box at a time; the three are interleaved per box so that a machine whose load
    # changes during the run affects all of them alike
    pe = sam.prompt_encoder
    dense_pe = pe.get_dense_pe()
    frame_boxes = [
        predictor.transform.apply_boxes_torch(
            torch.as_tensor(box[None], dtype=torch.float32), predictor.original_size
        )
        for box in single
    ]

    def bare_decoder(b: Any) -> Any:
        with torch.inference_mode():
            sparse, dense = pe(points=None, boxes=b, masks=None)
            return sam.mask_decoder(
                image_embeddings=predictor.features,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    prompter.boxes(single[0])  # warm-ups
    predictor.predict(box=single[0], multimask_output=False)
    bare_decoder(frame_boxes[0])
    ours, ref, floor = [], [], []
    for box, frame_box in zip(single, frame_boxes, strict=True):
        ours.append(timed(prompter.boxes, box)[0])
        ref.append(timed(predictor.predict, box=box, multimask_output=False)[0])
        floor.append(timed(bare_decoder, frame_box)[0])
    log(
        f"{size}: one box: ours {median_ms(ours)} ms, reference {median_ms(ref)} ms, "
        f"bare decoder {median_ms(floor)} ms"
    )

    # -- 50 boxes: ours in one call, the reference one predict per box
    boxes50_s, masks50 = timed(prompter.boxes, batch)
    our_logits, our_iou = prompter.decode_boxes(batch, multimask=False)
    our_logits = our_logits.float().cpu().numpy()
    our_iou = our_iou.float().cpu().numpy()
    ref50_s = 0.0
    logit_diff = iou_diff = 0.0
    equal = true_ref = 0
    for i, box in enumerate(batch):
        elapsed, (ref_masks, ref_iou, ref_low) = timed(
            predictor.predict, box=box, multimask_output=False, return_logits=False
        )
        ref50_s += elapsed
        logit_diff = max(logit_diff, float(np.abs(our_logits[i] - ref_low).max()))
        iou_diff = max(iou_diff, float(np.abs(our_iou[i] - ref_iou).max()))
        equal += int((masks50[i].full() == ref_masks[0]).sum())
        true_ref += int(ref_masks[0].sum())
    pixels = len(batch) * size * size
    agreement = equal / pixels
    log(f"{size}: 50 boxes: ours {ms(boxes50_s)} ms, reference {ms(ref50_s)} ms")

    box_ms, ref_box_ms = median_ms(ours), median_ms(ref)
    boxes50_ms, ref_boxes50_ms = ms(boxes50_s), ms(ref50_s)
    max_logit_diff = max(logit_diff, iou_diff)
    cache_hit_ms = median_ms(hits)
    result = {
        "image": f"make_nuclei(shape=({size}, {size}), n_objects={n_objects}, seed={SEED})",
        "true_objects": len(objects),
        "boxes_timed": len(single),
        "embed_s": round(embed_s, 4),
        "ref_embed_s": round(ref_embed_s, 4),
        "cache_hit_ms": cache_hit_ms,
        "box_ms": box_ms,
        "ref_box_ms": ref_box_ms,
        "decoder_ms": median_ms(floor),
        "boxes50_ms": boxes50_ms,
        "ref_boxes50_ms": ref_boxes50_ms,
        "max_logit_diff": max_logit_diff,
        "max_lowres_logit_diff": logit_diff,
        "max_iou_diff": iou_diff,
        "embedding_max_diff": embedding_diff,
        "mask_agreement": agreement,
        "mask_mismatch_pixels": pixels - equal,
        "ref_mask_true_fraction": round(true_ref / pixels, 4),
        "box_ratio": round(box_ms / ref_box_ms, 4),
        "boxes50_ratio": round(boxes50_ms / ref_boxes50_ms, 4),
        "goal_box": box_ms <= 0.75 * ref_box_ms,
        "goal_boxes50": boxes50_ms <= 0.6 * ref_boxes50_ms,
        "goal_logits": max_logit_diff <= 1e-3,
        "goal_agreement": agreement >= 0.9999,
        "goal_cache": cache_hit_ms < 5,
    }
    return result, image, truth


# -- the annotator in a real viewer -------------------------------------------------------


def _rectangle(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=np.float64)


def _spin(app: Any, milliseconds: int) -> None:
    """Run the Qt event loop for a while (napari draws, the layer list settles)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(milliseconds, loop.quit)
    loop.exec_()
    app.processEvents()


class Heartbeat:
    """A 10 ms QTimer on the main thread that records when each tick really ran."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def max_gap_ms(self, start: float, end: float) -> tuple[float, float, int]:
        """Longest gap between ticks around ``[start, end]`` (with the tick before start and
        the first after end), when it began (seconds after ``start``), and the number of
        ticks inside."""
        before = [t for t in self.ticks if t <= start]
        after = [t for t in self.ticks if t >= end]
        inside = [t for t in self.ticks if start < t < end]
        seq = np.array(
            ([before[-1]] if before else [start]) + inside + ([after[0]] if after else [end])
        )
        gaps = np.diff(seq)
        at = int(gaps.argmax())
        return ms(float(gaps[at])), round(float(seq[at] - start), 3), len(inside)


def bench_viewer(sam: Any, image: np.ndarray, truth: np.ndarray, n_boxes: int) -> dict[str, Any]:
    torch = import_torch()
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_cellsparse._napari.widgets.sam_annotator import ANNOTATION, SamAnnotatorWidget

    size = image.shape[0]
    objects = true_objects(truth)
    with tempfile.TemporaryDirectory(prefix="sam-bench-") as tmp:
        weights = Path(tmp) / f"random_vit_t_seed{SEED}.pt"
        torch.save(sam.state_dict(), weights)

        log(f"viewer: opening napari with the {size}x{size} image")
        viewer = napari.Viewer()
        app = QApplication.instance()
        viewer.add_image(image, name="nuclei")
        widget = SamAnnotatorWidget(viewer)
        viewer.window.add_dock_widget(widget, name="SAM annotator")
        widget.weights_edit.setText(str(weights))
        widget.device_combo.setCurrentText("cpu")
        _spin(app, 1000)

        # -- the embedding, computed once in the caller's thread (as the tests do)
        widget.runner.synchronous = True
        sync_embed_s, _ = timed(widget.compute_embedding)
        if widget.state.prompter is None or not widget._ready():
            raise SystemExit(f"viewer: the embedding failed: {widget.status.text()}")
        log(f"viewer: first embedding (synchronous, with model load) {sync_embed_s:.2f} s")

        # -- a box drawn in the prompts layer -> the object painted in the Labels layer.
        # The widget tiles images over 1.5 tiles: every tile is embedded first (the first box
        # in a tile would time its embedding), and the stand-in replaces the object of
        # whichever prompter the widget uses (image coordinates in, image coordinates out).
        tiled = widget.state.tiled
        if tiled is not None:
            run_sync(tiled.embed_all())
        prompter = tiled if tiled is not None else widget.state.prompter
        real_boxes = prompter.boxes
        decode_times: list[float] = []

        def boxes_with_truth(boxes: Any, multimask: bool = False) -> list[PromptMask]:
            elapsed, real = timed(real_boxes, boxes, multimask)
            decode_times.append(elapsed)
            out = []
            for box, found in zip(np.asarray(boxes).reshape(-1, 4), real, strict=True):
                inside = [
                    o
                    for o in objects
                    if box[0] <= o.x0
                    and box[1] <= o.y0
                    and o.x0 + o.mask.shape[1] <= box[2]
                    and o.y0 + o.mask.shape[0] <= box[3]
                ]
                if not inside:
                    raise RuntimeError(f"no true object inside the box {box}")
                obj = max(inside, key=lambda o: o.area)
                out.append(PromptMask(obj.mask.copy(), obj.y0, obj.x0, found.score, found.shape))
            return out

        prompter.boxes = boxes_with_truth  # type: ignore[method-assign]
        write_times: list[float] = []
        real_write = widget._write

        def timed_write(masks: Any) -> int:
            elapsed, written = timed(real_write, masks)
            write_times.append(elapsed)
            return written

        widget._write = timed_write  # type: ignore[method-assign]
        shapes = widget.prompts_layer()
        _spin(app, 200)
        chosen = cycle(objects, n_boxes + 1)  # the first one is the warm-up
        latencies, to_write, redraws = [], [], []
        for i, obj in enumerate(chosen):
            start_t = time.perf_counter()
            shapes.add_rectangles(_rectangle(obj.box))
            handled = time.perf_counter()
            app.processEvents()
            elapsed = time.perf_counter() - start_t
            if i:
                to_write.append(handled - start_t)
                redraws.append(elapsed - (handled - start_t))
            painted = viewer.layers[ANNOTATION].data[obj.y0 :, obj.x0 :][
                : obj.mask.shape[0], : obj.mask.shape[1]
            ][obj.mask]
            if painted.size == 0 or painted.min() < 2:
                raise SystemExit(
                    f"viewer: box {i} was not painted ({widget.status.text()}); "
                    "objects repeat when --boxes exceeds the true objects"
                )
            if i == 0:
                first_ms = ms(elapsed)
            else:
                latencies.append(elapsed)
        viewer_box_ms = median_ms(latencies)
        decode_ms = median_ms(decode_times[1:])
        phases = {
            "decode_ms": decode_ms,
            "paint_and_outline_ms": median_ms(write_times[1:]),
            "box_handler_ms": median_ms(to_write),
            "redraw_ms": median_ms(redraws),
        }
        phases["rest_of_handler_ms"] = round(
            phases["box_handler_ms"] - decode_ms - phases["paint_and_outline_ms"], 1
        )
        log(f"viewer: box -> painted object {viewer_box_ms} ms (real decoder {decode_ms} ms)")

        # -- the event loop while the embedding is computed in the background worker
        beat = Heartbeat()
        beat.timer.start()
        idle_start = time.perf_counter()
        _spin(app, 500)
        idle_gap, _, _ = beat.max_gap_ms(idle_start, time.perf_counter())

        state = widget.state
        state.cache.clear()
        state.prompter = None
        widget.runner.synchronous = False
        loop = QEventLoop()
        marks: dict[str, float] = {}

        def finished() -> None:
            marks["end"] = time.perf_counter()
            QTimer.singleShot(100, loop.quit)  # a few more ticks after the worker ends

        def start() -> None:
            marks["start"] = time.perf_counter()
            widget.compute_embedding()
            if widget.runner.worker is None:
                marks["end"] = time.perf_counter()
                loop.quit()
            else:
                widget.runner.worker.finished.connect(finished)

        QTimer.singleShot(0, start)
        QTimer.singleShot(600_000, loop.quit)  # safety net
        loop.exec_()
        beat.timer.stop()
        if state.prompter is None or "end" not in marks:
            raise SystemExit(f"viewer: the embedding failed: {widget.status.text()}")
        embed_in_viewer_s = marks["end"] - marks["start"]
        max_stall, stall_at, ticks = beat.max_gap_ms(marks["start"], marks["end"])
        if not widget._ready():
            raise SystemExit(f"viewer: the embedding is not in use: {widget.status.text()}")
        log(f"viewer: embedding in the worker {embed_in_viewer_s:.2f} s, max stall {max_stall} ms")

        viewer.close()
        app.processEvents()

    return {
        "image": f"make_nuclei(shape=({size}, {size}), n_objects={len(objects)}, seed={SEED})",
        "note": (
            "Real napari.Viewer (Xvfb) with SamAnnotatorWidget docked; the model comes from "
            "a file of the same seeded random vit_t weights, device cpu. The embedding is "
            "first computed once synchronously (first_embed_sync_s, with model load). "
            "viewer_box_ms: from prompts_layer().add_rectangles(corners) to the object "
            "painted in the Labels layer after one QApplication.processEvents(), median over "
            "boxes at different places (the first box, which creates the annotation layers, "
            "is excluded: viewer_first_box_ms). Random weights give image-sized noise masks, "
            "so the prompter's boxes() is wrapped: it runs the real implementation (decoder "
            "and upsampling; median time viewer_decode_ms, inflated by the noise masks) and "
            "then returns, with the real score, the ground-truth object inside the box as "
            "the PromptMask that gets painted. max_stall_ms: longest gap between ticks of a "
            "10 ms QTimer on the Qt event loop while compute_embedding() runs in the "
            "widget's background worker, after the box timings (cache cleared, prompter "
            "reset: it loads the weights and embeds again); embed_in_viewer_s is that whole "
            "job, from the call to the worker's finished signal; max_stall_at_s is when the "
            "longest gap began, in seconds after the call (negative: just before it)."
        ),
        "viewer_box_ms": viewer_box_ms,
        "viewer_box_phases": phases,
        "tiled": tiled is not None,
        "viewer_first_box_ms": first_ms,
        "viewer_decode_ms": decode_ms,
        "boxes_timed": len(latencies),
        "max_stall_ms": max_stall,
        "max_stall_at_s": stall_at,
        "heartbeat_ticks": ticks,
        "idle_max_gap_ms": idle_gap,
        "embed_in_viewer_s": round(embed_in_viewer_s, 4),
        "first_embed_sync_s": round(sync_embed_s, 4),
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1024, 2048], help="square image sides"
    )
    parser.add_argument("--no-viewer", action="store_true", help="skip the napari part")
    parser.add_argument(
        "--boxes", type=int, default=20, help="boxes for the single-box timings (default 20)"
    )
    parser.add_argument(
        "--objects", type=int, default=60, help="nuclei per generated image (default 60)"
    )
    args = parser.parse_args(argv)
    if args.boxes < 1 or args.objects < 1 or min(args.sizes) < 64:
        parser.error("--boxes and --objects must be positive and --sizes at least 64")
    headless = not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))
    if not args.no_viewer and sys.platform.startswith("linux") and headless:
        parser.error(
            "the viewer part needs a display: run under "
            'xvfb-run -a -s "-screen 0 1600x1000x24", or pass --no-viewer'
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Only the JSON goes to stdout: anything else written there (by us, a library or C code)
    # is sent to stderr until the end.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        began = time.perf_counter()
        load_start = os.getloadavg()
        torch = import_torch()
        import_mobile_sam()  # torchvision before any OpenGL context
        torch.manual_seed(SEED)
        sam = build_sam("vit_t").to("cpu")
        results: dict[str, Any] = {}
        image = truth = None
        for index, size in enumerate(args.sizes):
            results[str(size)], img, lab = bench_size(
                sam, size, args.boxes, args.objects, warm_encoder=index == 0
            )
            if size == max(args.sizes):
                image, truth = img, lab
        if not args.no_viewer:
            results["viewer"] = bench_viewer(sam, image, truth, args.boxes)
        results["machine"] = {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "total_s": round(time.perf_counter() - began, 1),
        }
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
