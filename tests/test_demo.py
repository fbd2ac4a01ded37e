"""The main job's window: ``make demo`` docks every widget of the manifest over the sample.

The demo runs in its own process, as a person starts it: it discovers the installed napari
plugins the real way, which napari's per-test plugin reset does not expect of a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import napari_cellsparse

MANIFEST = Path(napari_cellsparse.__file__).parent / "napari.yaml"

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from napari_cellsparse._napari.demo import open_demo, widget_names

    viewer, docked = open_demo()  # shown, as napari.Viewer() is
    for _ in range(5):
        QApplication.processEvents()
    extent = viewer.layers[0].extent.world
    window = viewer.window._qt_window
    room = QApplication.primaryScreen().availableGeometry()
    print(json.dumps({
        "names": widget_names(),
        "docked": len(docked),
        "docks": list(viewer.window._dock_widgets),
        "size": [float(v) for v in (extent[1] - extent[0])[-2:]],
        "canvas": [float(v) for v in viewer.window._qt_viewer.canvas.size],
        "zoom": float(viewer.camera.zoom),
        "window": [window.width(), window.height()],
        "screen": [room.width(), room.height()],
    }))
    viewer.close()
    """
)


def test_demo_docks_every_widget_and_shows_the_whole_image():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {"SAM annotator", "Sparse training", "Cell counting", "Batch", "Measure cells"}
    assert expected <= set(facts["names"])
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert facts["names"] == [w["display_name"] for w in manifest["contributions"]["widgets"]]
    assert facts["docked"] == len(facts["names"])
    assert all(f"{name} (napari-cellsparse)" in facts["docks"] for name in facts["names"])
    visible = np.asarray(facts["canvas"]) / facts["zoom"]  # (height, width) in image pixels
    assert np.all(visible >= np.asarray(facts["size"]) * 0.999), facts
    # The docks are tabs of one area: the window fits the screen (two stacked docks made it
    # 1,400 px tall) and the canvas has room (it was a third of the window's width).
    assert np.all(np.asarray(facts["window"]) <= np.asarray(facts["screen"])), facts
    assert facts["canvas"][1] >= 0.4 * facts["window"][0], facts


def test_demo_without_a_display_says_so(capsys):
    from napari_cellsparse._napari.demo import display_problem, main

    if not sys.platform.startswith("linux"):
        pytest.skip("the X display check is for Linux")
    assert "No display" in display_problem({})
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
            patch.delenv(name, raising=False)
        assert main([]) == 2
    assert "No display" in capsys.readouterr().err
