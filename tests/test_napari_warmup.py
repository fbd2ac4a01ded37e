"""napari's Shapes code is compiled off the event loop when the plugin's first widget opens."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("numba")


def test_the_warm_up_compiles_napari_shapes_code_in_a_daemon_thread_once():
    # A fresh interpreter: in this one, earlier tests may have made Shapes layers already.
    script = textwrap.dedent(
        """
        import threading
        from napari.layers.shapes import _accelerated_triangulate_numba as jit
        from napari_cellsparse._napari.warmup import warm_napari

        assert not jit.remove_path_duplicates.signatures  # nothing compiled or loaded yet
        thread = warm_napari()
        assert thread is not threading.main_thread() and thread.daemon
        assert warm_napari() is thread  # one per session
        thread.join(120)
        assert jit.remove_path_duplicates.signatures and jit.create_box_from_bounding.signatures
        print("WARM")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARM" in done.stdout


@pytest.mark.gui
def test_a_dock_widget_starts_the_warm_up(make_napari_viewer, monkeypatch):
    from napari_cellsparse._napari import warmup
    from napari_cellsparse._napari.widgets.measure_cells import MeasureCellsWidget

    monkeypatch.setattr(warmup, "_THREADS", [])  # as in a session with no widget yet
    MeasureCellsWidget(make_napari_viewer())
    assert warmup._THREADS and warmup._THREADS[0].name == "cellsparse-warm-napari"
