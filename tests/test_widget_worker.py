"""The dock widgets with the model worker process, in a SHOWN napari viewer (Xvfb).

This is how a person uses the plugin: a visible window (so Mesa's OpenGL is loaded), the
buttons pressed in order, jobs in the real worker process. TensorFlow and Mesa's OpenGL
crash when they share a process, so the napari process must never import TensorFlow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.gui

napari = pytest.importorskip("napari")
pytest.importorskip("torch")

FRAMEWORKS = ("tensorflow", "keras", "stardist.models", "cellpose")
SETTINGS = {
    "unet": "base_filters=8, depth=2",
    "cellpose": "",
    "stardist": "n_rays=16, unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=32",
}


def _installed(backend: str) -> bool:
    from importlib.util import find_spec

    needs = {"unet": ("torch",), "cellpose": ("cellpose",), "stardist": ("stardist", "tensorflow")}
    return all(find_spec(m) is not None for m in needs[backend])


@pytest.fixture
def shown(make_napari_viewer):
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth

    viewer = make_napari_viewer(show=True)
    image, truth = make_nuclei((96, 96), n_objects=6, radius=(6.0, 10.0), seed=1)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(sparse_from_truth(image, truth, k=1, band=6), name="annotation")
    widget = SparseTrainingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse training")
    widget.device_combo.setCurrentText("cpu")
    widget.patch_spin.setValue(64)
    widget.batch_spin.setValue(2)
    return viewer, widget, truth


@pytest.mark.parametrize("backend", ["unet", "cellpose", "stardist"])
def test_train_preview_stop_predict_in_a_shown_viewer(shown, qtbot, backend):
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed")
    viewer, widget, _truth = shown
    annotation = viewer.layers["annotation"].data.copy()
    before = set(sys.modules)
    widget.backend_combo.setCurrentText(backend)  # as a person picks it from the list:
    widget.backend_combo.textActivated.emit(backend)  # the worker loads it in the background
    widget.name_edit.setText(f"shown-{backend}")
    widget.steps_spin.setValue(400)
    widget.preview_spin.setValue(2)
    widget.settings_edit.setText(SETTINGS[backend])
    widget.train_button.click()
    assert widget.runner.busy
    qtbot.waitUntil(lambda: widget.state.step >= 2, timeout=120_000)
    widget.stop_button.click()  # the model so far is saved
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert "Stopped after" in widget.status.text(), widget.status.text()
    assert widget.runner._remote is False
    preview = viewer.layers["Training preview"]
    assert preview.data.shape == (96, 96)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert "Predicted" in widget.status.text(), widget.status.text()
    assert viewer.layers["nuclei prediction"].data.shape == (96, 96)
    # the prediction took over the preview's layer instead of lying on top of it
    assert viewer.layers["nuclei prediction"] is preview
    assert "Training preview" not in viewer.layers
    np.testing.assert_array_equal(viewer.layers["annotation"].data, annotation)
    # Train, pressed at once, waited for the background load, which went first
    assert [type(r) for r in widget.runner.warmed] == [dict], widget.runner.warmed
    assert widget.runner.warmed[0]["backend"] == backend
    assert not [m for m in FRAMEWORKS if m in set(sys.modules) - before]  # none imported here
    assert "tensorflow" not in sys.modules


def test_choosing_each_backend_imports_no_framework(tmp_path):
    """In a fresh napari process (other tests may have imported frameworks into this one)."""
    script = tmp_path / "choose.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        import napari
        from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget

        viewer = napari.Viewer(show=True)
        widget = SparseTrainingWidget(viewer)
        viewer.window.add_dock_widget(widget)
        steps = []
        for backend in ("stardist", "cellpose", "unet", "stardist"):
            widget.backend_combo.setCurrentText(backend)
            steps.append(widget.steps_spin.value())
        viewer.screenshot()
        print("STEPS", min(steps), flush=True)
        print("LOADED", [m for m in {(*FRAMEWORKS, "torch")!r} if m in sys.modules], flush=True)
        viewer.close()
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert int(lines["STEPS"]) > 0
    assert lines["LOADED"] == "[]"


def test_killed_worker_keeps_annotation_and_model(shown, qtbot, monkeypatch):
    from napari_cellsparse._napari.widgets import _worker

    shown_errors: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown_errors.append)
    viewer, widget, _truth = shown
    widget.backend_combo.setCurrentText("unet")
    widget.settings_edit.setText(SETTINGS["unet"])
    widget.name_edit.setText("kept")
    widget.steps_spin.setValue(3)
    widget.preview_spin.setValue(0)
    widget.train_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    before = viewer.layers["nuclei prediction"].data.copy()
    annotation = viewer.layers["annotation"].data.copy()

    widget.steps_spin.setValue(5000)
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.state.step >= 1, timeout=120_000)
    pid = _worker.shared_host().pid
    os.kill(pid, 0)  # alive
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert len(shown_errors) == 1, shown_errors
    assert "stopped unexpectedly" in shown_errors[0] and "Training unet 'kept'" in shown_errors[0]
    assert "last saved model version is intact" in widget.status.text()
    np.testing.assert_array_equal(viewer.layers["annotation"].data, annotation)

    widget.predict_button.click()  # the earlier model, in a fresh worker
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert _worker.shared_host().pid != pid
    np.testing.assert_array_equal(viewer.layers["nuclei prediction"].data, before)
    widget.steps_spin.setValue(2)
    widget.train_button.click()  # and training works again
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert "Trained 'kept' for 2 step(s)" in widget.status.text(), widget.status.text()


def _start_long_training(widget, qtbot) -> None:
    """A U-Net training far longer than the test, seen to be past its first step."""
    widget.backend_combo.setCurrentText("unet")
    widget.settings_edit.setText(SETTINGS["unet"])
    widget.steps_spin.setValue(5000)
    widget.preview_spin.setValue(0)
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.state.step >= 1, timeout=120_000)


def test_second_stop_ends_the_worker(shown, qtbot):
    from napari_cellsparse._napari.widgets import _worker
    from napari_cellsparse.training import list_models

    _viewer, widget, _truth = shown
    _start_long_training(widget, qtbot)
    pid = _worker.shared_host().pid
    widget.stop_button.click()
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert "was ended" in widget.status.text(), widget.status.text()
    assert not _worker.shared_host().alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list_models() == [] or all(m.get("steps", 0) < 5000 for m in list_models())


def test_closing_the_viewer_during_training_leaves_no_process(shown, qtbot):
    from napari_cellsparse._napari.widgets import _worker

    viewer, widget, _truth = shown
    _start_long_training(widget, qtbot)
    host = _worker.shared_host()
    pid = host.pid
    os.kill(pid, 0)
    viewer.close()
    qtbot.waitUntil(lambda: not host.alive, timeout=10_000)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_closing_the_dock_during_training_leaves_no_process(shown, qtbot):
    """The x on the dock's title bar, as a person clicks it, ends the widget's training."""
    from napari_cellsparse._napari.widgets import _worker

    viewer, widget, _truth = shown
    _start_long_training(widget, qtbot)
    host = _worker.shared_host()
    pid = host.pid
    os.kill(pid, 0)
    dock = widget.parent()
    dock.title.close_button.click()
    qtbot.waitUntil(lambda: not host.alive, timeout=10_000)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert widget.runner.closed
    assert "Sparse training" not in viewer.window._dock_widgets
    viewer.add_image(np.zeros((8, 8)), name="after")  # a closed widget follows no layers


def test_closing_a_widget_whose_job_waits_leaves_the_running_one(shown, qtbot):
    """A job queued behind another widget's training is dropped with its widget; the
    training that holds the worker goes on."""
    from napari_cellsparse._napari.widgets import _worker
    from napari_cellsparse._napari.widgets.sparse_training import SparseTrainingWidget

    viewer, widget, _truth = shown
    _start_long_training(widget, qtbot)
    waiting = SparseTrainingWidget(viewer)
    viewer.window.add_dock_widget(waiting, name="Second training")
    waiting.device_combo.setCurrentText("cpu")
    waiting.name_edit.setText("second")
    waiting.train_button.click()
    qtbot.waitUntil(lambda: "Waiting for" in waiting.status.text(), timeout=30_000)
    host = _worker.shared_host()
    pid = host.pid
    waiting.parent().title.close_button.click()
    qtbot.waitUntil(lambda: not waiting.runner.busy, timeout=10_000)
    step = widget.state.step
    qtbot.waitUntil(lambda: widget.state.step > step, timeout=60_000)
    assert host.alive and host.pid == pid
    assert widget.runner.busy


def test_every_plugin_module_then_a_shown_viewer(tmp_path):
    """Importing the whole plugin first, then showing a viewer, must not crash."""
    script = tmp_path / "first.py"
    script.write_text(
        textwrap.dedent("""
        import importlib, pkgutil, sys
        import napari_cellsparse
        for info in pkgutil.walk_packages(napari_cellsparse.__path__, "napari_cellsparse."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
        import napari
        viewer = napari.Viewer(show=True)
        viewer.add_image(__import__("numpy").zeros((64, 64)))
        viewer.screenshot()
        print("tensorflow" in sys.modules, flush=True)
        viewer.close()
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def _annotation_reports(widget) -> list[dict]:
    """The annotation figures (cells, trusted pixels) the running training reports, as the
    widget receives them."""
    seen: list[dict] = []
    handler = widget._on_progress

    def record(event, *args):
        handler(event, *args)
        if event.info.get("annotation"):
            seen.append(dict(event.info["annotation"]))

    widget._on_progress = record
    return seen


def test_painting_during_training_reaches_the_running_training(shown, qtbot):

    viewer, widget, truth = shown
    layer = viewer.layers["annotation"]
    widget.backend_combo.setCurrentText("unet")
    widget.settings_edit.setText(SETTINGS["unet"])
    widget.steps_spin.setValue(5000)
    widget.preview_spin.setValue(2)  # the worker pulls changes at each preview
    seen = _annotation_reports(widget)
    widget.train_button.click()
    qtbot.waitUntil(lambda: len(seen) >= 1 or not widget.runner.busy, timeout=120_000)
    assert seen, widget.status.text()
    first = seen[0]
    # A cell of the truth that is not annotated yet, painted as a new cell (an undoable edit).
    unannotated = [i for i in np.unique(truth[truth > 0]) if not (layer.data[truth == i] > 1).any()]
    assert unannotated
    cell = truth == unannotated[0]
    new_id = int(layer.data.max()) + 1
    layer.data_setitem(np.nonzero(cell), new_id)
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=120_000)
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert seen[1]["cells"] == first["cells"] + 1
    assert seen[1]["trusted_pixels"] > first["trusted_pixels"]
    assert "annotated cell" in widget.status.text() or "Stopped after" in widget.status.text()


def test_a_failing_job_is_one_message_and_a_script_keeps_running(tmp_path):
    """Compute embedding with no SAM weights, from a script that never calls napari.run()."""
    script = tmp_path / "no_run.py"
    script.write_text(
        textwrap.dedent("""
        import time
        import numpy as np
        import napari
        from napari.utils.notifications import notification_manager
        from qtpy.QtWidgets import QApplication
        from napari_cellsparse._napari.widgets.sam_annotator import SamAnnotatorWidget

        viewer = napari.Viewer(show=True)
        viewer.add_image(np.zeros((64, 64), np.float32), name="img")
        widget = SamAnnotatorWidget(viewer)
        viewer.window.add_dock_widget(widget)
        before = len(notification_manager.records)
        widget.embed_button.click()
        settle = time.monotonic() + 3  # events after the job's end get their chance too
        deadline = time.monotonic() + 60
        while (widget.runner.busy or time.monotonic() < settle) and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        errors = [n for n in notification_manager.records[before:] if n.severity == "error"]
        print("NOTIFICATIONS", len(errors), flush=True)
        print("MESSAGE", errors[0].message if errors else "", flush=True)
        print("STATUS", widget.status.text(), flush=True)
        print("STILL RUNNING", flush=True)
        viewer.close()
    """)
    )
    env = {**os.environ, "NAPARI_CELLSPARSE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["NOTIFICATIONS"] == "1", done.stdout
    assert "STILL RUNNING" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines["MESSAGE"] and lines["MESSAGE"] in lines["STATUS"]


def test_points_clicked_during_counter_training_reach_it(make_napari_viewer, qtbot):
    from scipy import ndimage as ndi

    from napari_cellsparse._napari.widgets.cell_counting import CellCountingWidget
    from napari_cellsparse.samples.generated import make_nuclei

    viewer = make_napari_viewer(show=True)
    image, labels = make_nuclei((96, 96), n_objects=8, radius=(5.0, 7.0), seed=1)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
    viewer.add_image(image, name="nuclei")
    points = viewer.add_points(centres[:3], name="centres I clicked")
    widget = CellCountingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Cell counting")
    widget.device_combo.setCurrentText("cpu")
    widget.settings_edit.setText("encoder_depth=3, decoder_width=8, patch_size=64, batch_size=2")
    widget.steps_spin.setValue(5000)
    seen = _annotation_reports(widget)
    widget.train_button.click()
    qtbot.waitUntil(lambda: len(seen) >= 1 or not widget.runner.busy, timeout=120_000)
    assert seen, widget.status.text()
    points.add(centres[3:5])  # two more clicks while it trains
    qtbot.waitUntil(lambda: len(seen) >= 2 or not widget.runner.busy, timeout=120_000)
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert len(seen) >= 2, widget.status.text()
    assert seen[0]["cells"] == 3 and seen[1]["cells"] == 5
    assert seen[1]["trusted_pixels"] > seen[0]["trusted_pixels"]


def test_a_result_that_cannot_be_shown_is_one_message(qtbot, monkeypatch):
    """A finished job whose result handler fails (here on purpose) gives one notification and
    frees the widget: Qt would abort the process on an exception escaping the slot."""
    from napari_cellsparse._napari.widgets import _worker
    from napari_cellsparse.core.progress import Progress

    shown: list[str] = []
    monkeypatch.setattr(_worker, "show_error", shown.append)
    lines: list[str] = []
    runner = _worker.JobRunner(status=lines.append)

    def job():
        yield Progress(0, 1, "working")
        return 7

    def done(value: int) -> None:
        raise ValueError(f"cannot show {value}")

    runner.start(job, done, "A job")
    qtbot.waitUntil(lambda: not runner.busy, timeout=30_000)
    assert len(shown) == 1 and "cannot show 7" in shown[0]
    assert "cannot show 7" in lines[-1]


def test_a_flood_of_progress_events_is_shown_without_nesting(make_napari_viewer, qtbot):
    """A job reporting faster than napari's progress bar redraws: events that arrive while
    one is shown (the bar processes Qt events) are shown in turn, not one call deeper each."""
    import sys

    from napari_cellsparse._napari.widgets import _worker
    from napari_cellsparse.core.progress import Progress

    make_napari_viewer(show=True)  # napari's progress bars are Qt widgets with a viewer
    depths: list[int] = []
    seen: list[int] = []
    runner = _worker.JobRunner()

    def job():
        for step in range(1, 4001):
            yield Progress(step, 4000, f"step {step}")
        return None

    def on_progress(event: Progress) -> None:
        seen.append(event.step)
        frame, depth = sys._getframe(), 0
        while frame is not None:
            frame, depth = frame.f_back, depth + 1
        depths.append(depth)

    runner.start(job, lambda _value: None, "A flood", on_progress=on_progress)
    qtbot.waitUntil(lambda: not runner.busy, timeout=120_000)
    assert seen == list(range(1, 4001))  # every event, in order, before the end
    assert max(depths) - min(depths) < 50, (min(depths), max(depths))
