"""How long the Qt event loop stalls while the Sparse training widget trains and predicts.

Run under a display (``xvfb-run -a python benchmarks/training_stall.py``). A 10 ms QTimer
heartbeat records when the event loop gets to run; the longest gap between beats is the
longest time the viewer was unresponsive. Phases: idle viewer (baseline), U-Net training on
the generated nuclei sample in the widget's worker (with live previews), then Predict. Prints
JSON (``--out`` also writes it).
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
    QTimer.singleShot(0, start)
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


def main() -> int:
    """Measure the stalls and print them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preview-every", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellsparse.paths import HOME_ENV

    os.environ[HOME_ENV] = tempfile.mkdtemp(prefix="stall-home-")  # never the user's models
    viewer = napari.Viewer()
    viewer.open_sample("napari-cellsparse", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellsparse", "Sparse training")
    widget.backend_combo.setCurrentText("unet")
    widget.name_edit.setText("stall-benchmark")
    widget.steps_spin.setValue(args.steps)
    widget.preview_spin.setValue(args.preview_every)
    widget.device_combo.setCurrentText("cpu")
    QApplication.processEvents()

    events: list[tuple[float, str]] = []
    original = widget.runner._on_progress

    def record(event: Any) -> None:
        events.append((time.perf_counter(), f"{event.message} [{event.step}/{event.total}]"))
        original(event)

    widget.runner._on_progress = record  # the worker's signal is connected at each start
    deadline = time.perf_counter() + 2.0
    idle, _, _ = measure(lambda: None, lambda: time.perf_counter() > deadline, 3.0)

    # napari's progress bar processes events while the job starts: the job has ended when
    # the runner is idle and the buttons it disables are enabled again.
    def idle_again() -> bool:
        return not widget.runner.busy and widget.train_button.isEnabled()

    training, train_s, beats = measure(widget.train, idle_again, 900.0)
    training["worst"] = _worst(beats, events)
    train_status = widget.status.text()
    events.clear()
    predict, predict_s, beats = measure(widget.predict, idle_again, 300.0)
    predict["worst"] = _worst(beats, events)
    result = {
        "benchmark": "training_stall",
        "heartbeat_ms": HEARTBEAT_MS,
        "image": list(viewer.layers[0].data.shape),
        "backend": "unet (defaults: patch 128, batch 8, 16 base filters)",
        "steps": args.steps,
        "preview_every": args.preview_every,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "idle": idle,
        "training": {**training, "wall_s": round(train_s, 2), "status": train_status},
        "predict": {**predict, "wall_s": round(predict_s, 2), "status": widget.status.text()},
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
