"""How long the Qt event loop stalls while the Sparse training widget trains and predicts.

Run under a display (``xvfb-run -a python benchmarks/training_stall.py``). A 10 ms QTimer
heartbeat records when the event loop gets to run; the longest gap between beats is the
longest time the viewer was unresponsive. Phases: idle viewer (baseline), U-Net training on
the generated nuclei sample (with live previews), a second, warm training, then Predict, for
each backend; the main thread's cost of showing 500 outlines; counting (train, count); a
layer block-wise; SAM embedding and automask. Model jobs run in the widgets' worker process.
For each job: the longest and p99 gap, and the time from the button to the first progress
event and to the first training step (cold: the worker starts and imports the backend; warm:
already imported). Prints JSON (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEARTBEAT_MS = 10


def _gaps_summary(beats: list[float]) -> dict[str, Any]:
    import numpy as np

    gaps = np.diff(np.asarray(beats)) * 1000.0 if len(beats) > 1 else np.zeros(1)
    return {
        "beats": len(beats),
        "max_gap_ms": round(float(gaps.max()), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "median_gap_ms": round(float(np.median(gaps)), 1),
        "gaps_over_50ms": int((gaps > 50).sum()),
        "gaps_over_100ms": int((gaps > 100).sum()),
    }


def measure(
    run: Callable[[], None], finished: Callable[[], bool], timeout_s: float
) -> tuple[dict[str, Any], float, list[float]]:
    """Start ``run()`` from the event loop, beat every 10 ms until ``finished()``; gap stats."""
    from qtpy.QtCore import QEventLoop, QTimer

    beats: list[float] = []
    loop = QEventLoop()
    started: list[float] = []

    def start() -> None:
        started.append(time.perf_counter())
        run()

    def beat() -> None:
        beats.append(time.perf_counter())
        if started and (finished() or beats[-1] - started[0] > timeout_s):
            loop.quit()

    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(beat)
    timer.start()
    QTimer.singleShot(50, start)  # a few beats first: a stall at the very start counts
    loop.exec()
    timer.stop()
    return _gaps_summary(beats), time.perf_counter() - started[0], beats


def _worst(beats: list[float], events: list[tuple[float, str]], n: int = 5) -> list[dict]:
    """The ``n`` longest gaps and the last progress message seen before each."""
    import numpy as np

    if len(beats) < 2:
        return []
    gaps = np.diff(np.asarray(beats))
    worst = []
    for i in np.argsort(gaps)[::-1][:n]:
        before = [m for t, m in events if t <= beats[i + 1]]
        worst.append(
            {"gap_ms": round(float(gaps[i]) * 1000, 1), "after": before[-1] if before else ""}
        )
    return worst


class Recorder:
    """Times of the progress events a widget's job runner receives (hooked per phase)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.original = runner._on_progress
        self.events: list[tuple[float, Any]] = []
        runner._on_progress = self.record  # the worker's signal is connected at each start

    def record(self, event: Any) -> None:
        self.events.append((time.perf_counter(), event))
        self.original(event)

    def summary(self, started: float) -> dict[str, Any]:
        """Seconds from the button to the first event, and to the first training step."""
        first = self.events[0][0] - started if self.events else None
        steps = [t for t, e in self.events if e.info.get("loss") is not None]
        out: dict[str, Any] = {"first_progress_s": _round(first)}
        if steps:
            out["first_step_s"] = _round(steps[0] - started)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def phase(widget: Any, press: Callable[[], None], timeout: float) -> dict[str, Any]:
    """Press a widget's button and beat until its job has ended; gaps, first progress, wall."""
    recorder = Recorder(widget.runner)
    started: list[float] = []

    def start() -> None:
        started.append(time.perf_counter())
        press()

    # napari's progress bar processes events while the job starts: the job has ended when
    # the runner is idle again.
    stats, wall, beats = measure(start, lambda: not widget.runner.busy, timeout)
    labelled = [(t, f"{e.message} [{e.step}/{e.total}]") for t, e in recorder.events]
    widget.runner._on_progress = recorder.original
    return {
        **stats,
        **recorder.summary(started[0]),
        "wall_s": round(wall, 2),
        "worst": _worst(beats, labelled, 3),
        "status": widget.status.text(),
    }


def _sam_weights() -> Path:
    """A vit_t checkpoint of the real architecture with seeded random weights."""
    import tempfile

    import torch

    from napari_cellsparse.sam.models import build_sam

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="stall-sam-")) / "random_vit_t.pt"
    torch.save(build_sam("vit_t").state_dict(), path)
    return path


def _many_objects(n: int = 500) -> Any:
    """A 1024 x 1024 label image of ``n`` discs (the cost of showing ``n`` outlines)."""
    import numpy as np

    from napari_cellsparse.samples.generated import make_nuclei

    return make_nuclei((1024, 1024), n_objects=n, radius=(9.0, 12.0), seed=3)[1].astype(np.int32)


def main() -> int:
    """Measure the stalls of every long widget job and print them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preview-every", type=int, default=10)
    parser.add_argument("--backends", default="unet,cellpose,stardist")
    parser.add_argument(
        "--only", default="", help="comma list of phase groups: train,count,batch,sam,outlines"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    groups = set(filter(None, args.only.split(","))) or {
        "train",
        "count",
        "batch",
        "sam",
        "outlines",
    }

    import tempfile

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_cellsparse.core.paths import HOME_ENV
    from napari_cellsparse.worker import worker_threads

    os.environ[HOME_ENV] = tempfile.mkdtemp(prefix="stall-home-")  # never the user's models
    viewer = napari.Viewer()
    viewer.open_sample("napari-cellsparse", "nuclei")
    image_name = viewer.layers[0].name
    QApplication.processEvents()
    deadline = time.perf_counter() + 2.0
    idle, _, _ = measure(lambda: None, lambda: time.perf_counter() > deadline, 3.0)
    phases: dict[str, Any] = {}

    _, trainer = viewer.window.add_plugin_dock_widget("napari-cellsparse", "Sparse training")
    trainer.steps_spin.setValue(args.steps)
    trainer.preview_spin.setValue(args.preview_every)
    trainer.device_combo.setCurrentText("cpu")
    if "train" in groups:
        for backend in args.backends.split(","):
            trainer.backend_combo.setCurrentText(backend)
            trainer.name_edit.setText(f"stall-{backend}")
            trainer.steps_spin.setValue(args.steps)
            trainer.reset()
            phases[f"train_{backend}"] = phase(trainer, trainer.train, 1800.0)
            # again, now that the worker has imported the backend: the warm start
            trainer.steps_spin.setValue(max(2, args.steps // 5))
            phases[f"train_{backend}_warm"] = phase(trainer, trainer.train, 1800.0)
            trainer.model_combo.setCurrentText(f"stall-{backend}")
            phases[f"predict_{backend}"] = phase(trainer, trainer.predict, 600.0)

    if "outlines" in groups:
        # The main thread's share of showing a prediction of 500 objects (the worker's part
        # is done): what Predict's result handler costs.
        labels = _many_objects()
        viewer.add_image(labels.astype(np.float32), name="many")
        settle = time.perf_counter() + 1.0
        measure(lambda: None, lambda: time.perf_counter() > settle, 3.0)  # drawn before timing
        result = {
            "labels": labels,
            "objects": int(labels.max()),
            "backend": "unet",
            "device": "cpu",
            "diameters": [20.0],
        }
        shown: list[bool] = []

        def show() -> None:
            trainer._predicted("many", viewer.layers["many"], "stall", result)
            shown.append(True)

        stats, wall, _ = measure(show, lambda: bool(shown), 60.0)
        phases["show_500_outlines"] = {
            **stats,
            "objects": int(labels.max()),
            "wall_s": round(wall, 2),
        }

    if "count" in groups:
        _, counter = viewer.window.add_plugin_dock_widget("napari-cellsparse", "Cell counting")
        from scipy import ndimage as ndi

        from napari_cellsparse.samples.catalog import load_sample

        truth = load_sample("nuclei").labels

        centres = np.array(ndi.center_of_mass(truth > 0, truth, range(1, int(truth.max()) + 1)))
        viewer.add_points(centres[::4], name="clicked centres")
        counter.image_combo.setCurrentText(image_name)
        counter.points_combo.setCurrentText("clicked centres")
        counter.steps_spin.setValue(args.steps)
        counter.device_combo.setCurrentText("cpu")
        phases["count_train"] = phase(counter, counter.train, 1800.0)
        counter.count_image_combo.setCurrentText(image_name)
        phases["count"] = phase(counter, counter.count, 600.0)

    if "batch" in groups and "train" in groups:
        _, batch = viewer.window.add_plugin_dock_widget("napari-cellsparse", "Batch")
        batch.refresh_models()
        batch.model_combo.setCurrentText("stall-unet")
        batch.image_combo.setCurrentText(image_name)
        batch.block_spin.setValue(256)
        phases["blockwise_layer"] = phase(batch, batch.run_layer, 600.0)

    if "sam" in groups:
        _, sam = viewer.window.add_plugin_dock_widget("napari-cellsparse", "SAM annotator")
        sam.image_combo.setCurrentText(image_name)
        sam.model_combo.setCurrentText("vit_t")
        sam.device_combo.setCurrentText("cpu")
        sam.weights_edit.setText(str(_sam_weights()))
        phases["sam_embedding"] = phase(sam, sam.compute_embedding, 600.0)
        sam.automask_spins["points_per_side"].setValue(8)
        phases["sam_automask"] = phase(sam, sam.run_automask, 900.0)

    jobs = {k: v for k, v in phases.items() if "max_gap_ms" in v}
    worst = max(jobs, key=lambda k: jobs[k]["max_gap_ms"]) if jobs else None
    result = {
        "benchmark": "training_stall",
        "heartbeat_ms": HEARTBEAT_MS,
        "image": list(viewer.layers[image_name].data.shape),
        "steps": args.steps,
        "preview_every": args.preview_every,
        "worker_threads": worker_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "idle": idle,
        "phases": phases,
        "longest_gap_ms": jobs[worst]["max_gap_ms"] if worst else None,
        "longest_gap_phase": worst,
        "goal_longest_gap_ms": 100,
        "goal_first_step_warm_s": 5,
    }
    viewer.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
